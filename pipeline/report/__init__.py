"""Stage `report`: clinical HTML pages from files the earlier stages wrote.

    arm.py       the descriptor each arm supplies (<arm>/report.py: REPORT = ArmReport(...))
    runs.py      find and read each evaluated run (metrics json, eval.json, eval.npz, arm data)
    tables.py    headline per-class numbers with bootstrap CIs, n/a reasons, failure modes
    compare.py   side-by-side tables, as each arm's plans say
    figures.py   matplotlib figures as base64 PNG data URIs
    render.py    Jinja2 environment and page contexts
    stage.py     main(): params, build every page

Nothing here retrains or re-predicts, or knows which arms exist; pages are self-contained.
"""
