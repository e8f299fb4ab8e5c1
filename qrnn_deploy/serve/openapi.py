"""The OpenAPI 3.1 description of the HTTP API (written by hand: the shapes are the contract).

The WebSocket protocol of /v1/stream is not expressible in OpenAPI; it is summarised in the
operation's description and documented in docs/server.md.
"""

from __future__ import annotations

from qrnn_deploy import __version__
from qrnn_deploy.serve.config import ServeConfig


def _error_response(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_spec(cfg: ServeConfig) -> dict:
    timings = {
        "tokens": {"type": "integer", "description": "target tokens"},
        "steps": {"type": "integer", "description": "decoder steps"},
        "beam": {"type": "integer"},
        "source_chars": {"type": "integer"},
        "encode_ms": {"type": "number", "description": "time spent encoding the source pieces"},
        "first_token_ms": {"type": ["number", "null"], "description": "end of source -> first token"},
        "decode_ms": {"type": "number", "description": "end of source -> done"},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "qrnn-deploy translation server", "version": __version__,
                 "description": "Streaming QRNN translation. WebSocket streaming at /v1/stream (see docs/server.md)."},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "TranslateRequest": {
                    "type": "object", "required": ["text"],
                    "properties": {
                        "text": {"type": "string", "minLength": 1, "maxLength": cfg.max_source_chars},
                        "beam": {"type": "integer", "minimum": 1, "maximum": cfg.max_beam, "default": cfg.beam},
                        "max_len": {"type": "integer", "minimum": 1, "maximum": cfg.max_len, "default": cfg.max_len},
                        "length_penalty": {"type": "number", "minimum": 0, "maximum": 10,
                                           "default": cfg.length_penalty},
                        "stream": {"type": "boolean", "default": False,
                                   "description": "true: text/event-stream of `token` events then `done`"},
                    }},
                "TranslateResponse": {
                    "type": "object", "required": ["text", "ids", "pieces"],
                    "properties": {"text": {"type": "string"},
                                   "ids": {"type": "array", "items": {"type": "integer"}},
                                   "pieces": {"type": "array", "items": {"type": "string"}},
                                   **timings}},
            },
        },
        "security": [{"bearer": []}, {"apiKeyHeader": []}, {"apiKeyQuery": []}] if cfg.api_key else [],
        "paths": {
            "/v1/translate": {"post": {
                "summary": "Translate one source text",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/TranslateRequest"}}}},
                "responses": {
                    "200": {"description": "The translation (JSON), or with stream=true server-sent events: "
                                           "`token` {text, ids, index, ms} ... then `done` or `error`",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TranslateResponse"}},
                                        "text/event-stream": {"schema": {"type": "string"}}}},
                    "400": _error_response("Malformed request or option out of range"),
                    "401": _error_response("Missing or wrong API key"),
                    "403": _error_response("Another web origin's page (forbidden_origin), or a Host name that "
                                           "is not loopback on a loopback connection (forbidden_host)"),
                    "408": _error_response(f"The body did not arrive within {cfg.send_timeout:g} s"),
                    "413": _error_response(f"Body over {cfg.max_message_bytes} bytes"),
                    "500": _error_response("The runtime failed on this request (translate_failed)"),
                    "503": _error_response("Too many open streams, or draining (Retry-After: 1)"),
                }}},
            "/v1/stream": {"get": {
                "summary": "WebSocket: stream source pieces in, target tokens out",
                "description": 'Client: {"type": "source", "text"} ..., {"type": "end", "beam"?, "max_len"?}, '
                               '{"type": "reset"}, {"type": "ping"}. Server: {"type": "token", "text", "ids", '
                               '"index", "ms"} ..., {"type": "done", "text", ...timings}, {"type": "error", '
                               '"code", "message"}. Close codes: 1013 busy/draining, 1008 bad key, 4408 idle. '
                               'A handshake from another web origin is refused with 403.',
                "responses": {"101": {"description": "Switching protocols"},
                              "403": {"description": "Another web origin, or a rebound Host name"}}}},
            "/healthz": {"get": {"summary": "Liveness / readiness", "security": [], "responses": {
                "200": {"description": "Serving"}, "503": {"description": "Draining or stopped"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Text exposition 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/status": {"get": {"summary": "Streams, translations and model states held now, limits, model",
                                   "responses": {"200": {"description": "Status object"}}}},
            "/": {"get": {"summary": "The live translation page", "responses": {"200": {"description": "HTML"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
