from clickflow.cli import app

app()
