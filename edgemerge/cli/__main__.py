from edgemerge.cli import main

main()
