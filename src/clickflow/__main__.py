from clickflow.cli import app

# Guarded: a spawned worker process (the page-view decoder) imports the parent's __main__.
if __name__ == "__main__":
    app()
