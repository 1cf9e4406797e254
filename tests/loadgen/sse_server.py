"""A minimal OpenAI-style SSE server with known timing, run as a subprocess by the load generator tests.

    python -m tests.loadgen.sse_server --ttft-ms 200 --itl-ms 20 [--fail-every 10] [--stall-after 3]
                                       [--no-usage] [--require-token T] [--tls-dir D]

It binds 127.0.0.1 on a free port and prints ``PORT <n>`` once listening.  Token i of a stream is written at
request arrival + TTFT + i * ITL (absolute deadlines, so sleeps never accumulate drift); the output length
is exactly `max_tokens` and prompt tokens are counted as whitespace-separated words.  With `--fail-every N`
the N-th, 2N-th, ... generation requests answer 500 with an OpenAI error body; with `--stall-after K` a stream
sends K tokens and then goes silent (connection open, no [DONE]) until the client gives up.  A separate
process keeps the server's CPU off the client's event loop, as with a real engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl

from aiohttp import web


def make_app(args: argparse.Namespace) -> web.Application:
    seq = 0

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def generate(request: web.Request) -> web.StreamResponse:
        nonlocal seq
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if args.require_token and request.headers.get("Authorization") != f"Bearer {args.require_token}":
            return web.json_response(
                {"error": {"message": "invalid API key", "type": "AuthenticationError"}}, status=401
            )
        body = await request.json()
        seq += 1
        if args.fail_every and seq % args.fail_every == 0:
            return web.json_response(
                {
                    "error": {
                        "message": "injected failure",
                        "type": "InternalServerError",
                    }
                },
                status=500,
            )
        chat = request.path.endswith("/chat/completions")
        if request.path.endswith("/embeddings"):
            await asyncio.sleep(args.ttft_ms / 1000.0)
            n = len(str(body["input"]).split())
            return web.json_response(
                {
                    "data": [{"embedding": [0.0, 1.0], "index": 0}],
                    "usage": {"prompt_tokens": n, "total_tokens": n},
                }
            )
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        prompt_tokens = len(prompt.split())
        n_out = int(body.get("max_tokens") or 16)
        usage_wanted = (body.get("stream_options") or {}).get("include_usage") and not args.no_usage
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if chat:  # a role-only first chunk, as vLLM sends: it carries no content and must not count as TTFT
            await resp.write(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
        for i in range(n_out):
            if args.stall_after is not None and i >= args.stall_after:
                await asyncio.sleep(3600)
            delay = arrived + (args.ttft_ms + i * args.itl_ms) / 1000.0 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            choice = {"index": 0, "delta": {"content": f" t{i}"}} if chat else {"index": 0, "text": f" t{i}"}
            await resp.write(b"data: " + json.dumps({"choices": [choice], "usage": None}).encode() + b"\n\n")
        if usage_wanted:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n_out,
                "total_tokens": prompt_tokens + n_out,
            }
            await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/embeddings", generate)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args), access_log=None)
    await runner.setup()
    tls = None
    if args.tls_dir:  # tls.crt / tls.key written by the test
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(f"{args.tls_dir}/tls.crt", f"{args.tls_dir}/tls.key")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # aiohttp exposes the bound port only here
    print(f"PORT {port}", flush=True)
    try:
        await asyncio.sleep(args.lifetime)  # a leaked server still goes away on its own
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--stall-after", type=int)
    p.add_argument("--no-usage", action="store_true")
    p.add_argument("--require-token")
    p.add_argument("--tls-dir")
    p.add_argument("--lifetime", type=float, default=600.0)
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
