from nvi.cli import main

main()
