"""The streaming translation server: Starlette + uvicorn over the runtime (docs/server.md).

    from qrnn_deploy.runtime import load_bundle
    from qrnn_deploy.serve import ServeConfig, create_app, make_server
    app = create_app(load_bundle("bundle/").translator(), ServeConfig(max_streams=64))
    make_server(app, port=8000).run()

Arrows: cli -> serve -> runtime. This package never imports torch, qrnn_deploy.nn or .export.
"""

from qrnn_deploy.serve.app import create_app
from qrnn_deploy.serve.config import ServeConfig
from qrnn_deploy.serve.engine import Engine, Job
from qrnn_deploy.serve.metrics import ServerMetrics
from qrnn_deploy.serve.server import DrainingServer, make_server, run_server

__all__ = ["create_app", "ServeConfig", "Engine", "Job", "ServerMetrics", "DrainingServer", "make_server",
           "run_server"]
