"""Small pieces every package of this project shares; nothing here imports torch at import time.

* :mod:`.files` -- atomic writes (temporary file, fsync, rename, fsync of the folder) and an exclusive lock file;
* :mod:`.threads` -- context managers that set and restore torch's and FAISS's thread counts;
* :mod:`.params` -- parsers and click types for ``HxW`` pairs, ``CxHxW`` shapes and ``N|MIN-MAX`` ranges;
* :mod:`.cli` -- the error policy both command lines share (known errors: one line, exit 2; bugs: a traceback).
"""
