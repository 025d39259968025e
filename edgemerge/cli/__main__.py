from edgemerge.cli import main

main(prog_name="edgemerge")
