// Shared pieces of the edgemerge TensorRT plugins: constants, logging, field parsing, and the
// IPluginV3 boilerplate (capability lookup, identity, no-op configure hooks) and a generic
// IPluginCreatorV3One. The op-specific parts live in token*Plugin.cpp.
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "edgemerge plugins need TensorRT >= 10 (IPluginV3)"
#endif

#define EDGEMERGE_EXPORT __attribute__((visibility("default")))

namespace edgemerge
{
namespace plugin
{

constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "edgemerge";

//! Logger used by the plugins (set through setLoggerFinder); messages are dropped without one.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logError(std::string const& msg) noexcept;
void logWarning(std::string const& msg) noexcept;

//! Throw std::invalid_argument(msg) unless cond.
inline void check(bool cond, std::string const& msg)
{
    if (!cond)
        throw std::invalid_argument(msg);
}

//! Field parsing: scalar ints and int arrays (kINT32, or kINT64 / kINT8 / kINT16 converted).
//! `plugin_namespace` and unknown fields are ignored.
bool fieldIs(nvinfer1::PluginField const& f, char const* name) noexcept;
std::vector<int32_t> fieldInts(nvinfer1::PluginField const& f);
int32_t fieldInt(nvinfer1::PluginField const& f);

//! IPluginV3 with the OneCore/OneBuild/OneRuntime capabilities implemented by `this`.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    ~PluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore (getPluginName in the op classes)
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

    // IPluginV3OneBuild: shapes are checked in getOutputShapes and enqueue.
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;

protected:
    PluginBase() = default;
    PluginBase(PluginBase const&) = default;
    //! Refresh mFields/mFieldCollection from the attributes (getFieldsToSerialize).
    nvinfer1::PluginFieldCollection const* setSerialFields(std::vector<nvinfer1::PluginField> fields) noexcept;

private:
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

//! The match ops' common I/O: metric [B, N, C] float32 in, slot [B, N] int32 out.
class MatchPluginBase : public PluginBase
{
public:
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;

protected:
    MatchPluginBase() = default;
    MatchPluginBase(MatchPluginBase const&) = default;
};

//! IPluginCreatorV3One for plugin class P, which provides
//!   static char const* name();
//!   static std::vector<nvinfer1::PluginField> const& fieldList();
//!   static P* create(nvinfer1::PluginFieldCollection const* fc);  // throws on bad attributes
template <typename P>
class PluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    PluginCreator()
    {
        auto const& fields = P::fieldList();
        mFieldCollection.nbFields = static_cast<int32_t>(fields.size());
        mFieldCollection.fields = fields.empty() ? nullptr : fields.data();
    }

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            check(fc != nullptr, "null PluginFieldCollection");
            return P::create(fc);
        }
        catch (std::exception const& e)
        {
            logError(std::string(P::name()) + " (" + (name ? name : "") + "): " + e.what());
        }
        catch (...)
        {
            logError(std::string(P::name()) + ": unknown error in createPlugin");
        }
        return nullptr;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }
    char const* getPluginName() const noexcept override { return P::name(); }
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

private:
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! The four creators, in a fixed order (defined in pluginLibrary.cpp).
nvinfer1::IPluginCreatorInterface* const* pluginCreators(int32_t& nbCreators) noexcept;

} // namespace plugin
} // namespace edgemerge
