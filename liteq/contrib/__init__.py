"""Framework integrations: liteq.contrib.django and liteq.contrib.flask.

Each imports its framework; `import liteq` imports neither.
"""
