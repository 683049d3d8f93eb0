"""``python -m agssp``: the same command line as the installed ``agssp`` script."""

from agssp.main import app

if __name__ == "__main__":
    app(prog_name="agssp")
