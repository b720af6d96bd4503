#!/usr/bin/env python3
"""Memory per idle keep-alive connection: opens HTTP/1.1 connections to a running weir, each sends one Datadog
request (202) and then stays open doing nothing; weir's RSS (/proc/PID/status VmRSS) is read before, after each
step and after closing them all. How config/deploy/README.md's figures were measured:

  weir run --config c.yaml &      # limits: {max_connections_per_ip: 0, idle_timeout: 600s}, tenant key weir-demo-key
  python3 config/deploy/conn_memory.py --pid $! --port 8088 --steps 1000,5000 [--tls] [--events 1000 --parallel 16]

--events sets the events per request (~280 bytes each): a large first body shows what a connection keeps after it.
"""
import argparse
import asyncio
import json
import os
import ssl


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_one(port: int, request: bytes, ctx) -> tuple:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.write(request)
    await writer.drain()
    status = await reader.readline()
    assert b" 202 " in status, status
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return reader, writer


async def main(a) -> None:
    event = {"message": "hello from an idle agent " + "x" * 200, "service": "demo", "ddsource": "test"}
    body = json.dumps([event] * a.events).encode()
    request = (f"POST /api/v2/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nDD-API-KEY: {a.key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    await asyncio.sleep(3)
    base = rss_kib(a.pid)
    print(f"body {len(body)} bytes; idle weir: {base} KiB", flush=True)
    held: list = []
    prev_n, prev_rss = 0, base
    for total in (int(s) for s in a.steps.split(",")):
        gate = asyncio.Semaphore(a.parallel)

        async def gated():
            async with gate:
                return await open_one(a.port, request, ctx)

        held += await asyncio.gather(*(gated() for _ in range(total - len(held))))
        await asyncio.sleep(5)  # jemalloc returns freed pages after about a second
        rss = rss_kib(a.pid)
        print(f"{total} connections: {rss} KiB; {(rss - prev_rss) / (total - prev_n):.1f} KiB per connection over the "
              f"last {total - prev_n}, {(rss - base) / total:.1f} over all", flush=True)
        prev_n, prev_rss = total, rss
    for _, writer in held:
        writer.close()
    await asyncio.sleep(6)
    print(f"all closed: {rss_kib(a.pid)} KiB", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True, help="weir's process id")
    p.add_argument("--port", type=int, default=8088, help="the intake listener's port on 127.0.0.1")
    p.add_argument("--steps", default="1000,5000", help="connection totals to measure at")
    p.add_argument("--tls", action="store_true", help="the listener is https")
    p.add_argument("--key", default="weir-demo-key", help="a tenant's API key")
    p.add_argument("--events", type=int, default=1, help="events in each connection's one request")
    p.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    args = p.parse_args()
    assert os.path.exists(f"/proc/{args.pid}"), f"no process {args.pid}"
    asyncio.run(main(args))
