#!/usr/bin/env python3
"""WatchVoiceStatus streams from Python grpcio (gRPC's C-core client), for the
fanout scenario: the server's memory per stream with a client other than tonic.

    grpcio_watch.py TARGET TOKEN STREAMS CONNECTIONS VOICE_ID...

Opens STREAMS streams over CONNECTIONS HTTP/2 connections (a channel each,
with its own subchannel pool so channels do not share a connection), each on
one of the VOICE_IDs, and reads each stream's snapshot. Prints
"open <seconds>" once every stream has it, keeps them open until a line
arrives on stdin, then cancels them all, closes the channels and prints
"closed". Messages are passed as bytes: no generated code is needed.
"""

import asyncio
import sys
import time

import grpc

METHOD = "/voicehub.v1.VoiceService/WatchVoiceStatus"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def watch_request(voice_id: str) -> bytes:
    """WatchVoiceStatusRequest { voice_ids: [voice_id] } (field 1, a string)."""
    raw = voice_id.encode()
    return b"\x0a" + varint(len(raw)) + raw


async def main() -> None:
    target, token = sys.argv[1], sys.argv[2]
    streams, connections = int(sys.argv[3]), int(sys.argv[4])
    ids = sys.argv[5:]
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    per_connection = -(-streams // connections)
    metadata = (("authorization", token),)
    calls = []
    opening = asyncio.Semaphore(256)

    async def open_one(i: int) -> None:
        watch = channels[i // per_connection].unary_stream(METHOD)
        async with opening:
            call = watch(watch_request(ids[i % len(ids)]), metadata=metadata)
            snapshot = await call.read()
            if snapshot is grpc.aio.EOF:
                raise RuntimeError(f"stream {i} ended before its snapshot: {await call.code()}")
        calls.append(call)

    started = time.monotonic()
    await asyncio.gather(*(open_one(i) for i in range(streams)))
    print(f"open {time.monotonic() - started:.3f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()
    print("closed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
