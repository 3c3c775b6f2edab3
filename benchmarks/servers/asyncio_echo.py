"""
Baseline: an asyncio Protocol echo (TCP, Unix, UDP), the way asyncio's
documentation writes it; ``--uvloop`` runs the same code on uvloop.

Prints one line, ``READY tcp=P udp=P unix=PATH``, once everything listens;
runs until killed.

    python asyncio_echo.py [--uvloop] --tcp 0 --udp 0 --unix /tmp/x.sock
"""

import argparse
import asyncio
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class UDPEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve(args):
    loop = asyncio.get_running_loop()
    ready = []
    keep = []  # uvloop closes a server object nobody refers to when it is collected
    if args.tcp is not None:
        server = await loop.create_server(Echo, "127.0.0.1", args.tcp)
        keep.append(server)
        ready.append(f"tcp={server.sockets[0].getsockname()[1]}")
    if args.udp is not None:
        transport, _ = await loop.create_datagram_endpoint(UDPEcho, local_addr=("127.0.0.1", args.udp))
        keep.append(transport)
        ready.append(f"udp={transport.get_extra_info('sockname')[1]}")
    if args.unix is not None:
        keep.append(await loop.create_unix_server(Echo, args.unix))
        ready.append(f"unix={args.unix}")
    print("READY " + " ".join(ready), flush=True)
    await asyncio.Event().wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", type=int)
    p.add_argument("--udp", type=int)
    p.add_argument("--unix")
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
