from wanrt.cli import main

main()
