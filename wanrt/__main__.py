from wanrt.commands.main import main

main()
