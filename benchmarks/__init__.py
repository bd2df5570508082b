"""LogitGuard's benchmarks: each module is a script, run from the repository root as ``python -m benchmarks.NAME``.

Each writes its results as JSON into ``benchmarks/results/`` after every run, resumes (``--resume``), merges another
machine's rows (``--merge``) and prints its tables from the JSON (``--table``); ``python -m benchmarks.tables``
rewrites every table of the documentation from those files. The benchmarks import the library and the lab
(:mod:`logitguard.lab`); nothing in ``logitguard`` imports them. See ``benchmarks/README.md``.
"""
