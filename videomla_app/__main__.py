from .cli import main

# Guarded so that importing the module (tools, spawned processes) never starts a CLI run.
if __name__ == "__main__":
    main()
