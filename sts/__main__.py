from sts.cli import main

main()
