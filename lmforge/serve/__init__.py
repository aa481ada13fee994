"""Using trained runs: the OpenAI-compatible HTTP API (api, server), its continuous-batching engine
(engine), the services it loads (models), and the web dashboard (ui, jobs, static/).

Layer: above auto, below cli.
"""
