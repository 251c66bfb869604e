"""Abusive HTTP clients for the exporter's tests (tests/test_views.py): idle connections, slow
clients that trickle a header line at a time, crowds of concurrent scrapes, each from loopback
source addresses of its own (127.0.0.0/8 is all local), so that a per-peer bound can be told
apart from a total one.

Everything is bounded: counts are given by the caller, every wait has a timeout, and every
socket is closed when its coroutine ends. Used in-process with asyncio.run(); nothing here
asserts, the caller does.
"""

import asyncio
import resource

REQUEST = "GET /metrics HTTP/1.1\r\nHost: exporter\r\nConnection: close\r\n\r\n"


def raise_fd_limit(need):
    """Room for `need` more sockets in this process (the soft limit up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, soft + need) if hard != resource.RLIM_INFINITY else soft + need
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def sources(n, first=10):
    """n loopback source addresses, 127.0.1.<first> onwards (not 127.0.0.1, the scraper's)."""
    return [f"127.0.1.{first + i}" for i in range(n)]


async def connect(host, port, source, timeout=5.0):
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0)), timeout)


async def scrape(host, port, source="127.0.0.1", timeout=10.0):
    """One GET /metrics; True when it got a 200 and a body that names bgswitch_info."""
    writer = None
    try:
        reader, writer = await connect(host, port, source, timeout)
        writer.write(REQUEST.encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout)
        head, _, body = data.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.1 200") and b"bgswitch_info{" in body
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer:
            writer.close()


async def scrapes_during(host, port, count, interval):
    """count scrapes one after the other, interval seconds apart: how many succeeded."""
    ok = 0
    for _ in range(count):
        ok += await scrape(host, port)
        await asyncio.sleep(interval)
    return ok


async def hold_idle(host, port, srcs, per_source, stop):
    """per_source connections from each source address that send nothing until stop is set.
    Returns (opened, still_open_at_stop): the server may close those over its bounds."""
    tries = await asyncio.gather(*(connect(host, port, src) for src in srcs
                                   for _ in range(per_source)), return_exceptions=True)
    conns = [c for c in tries if not isinstance(c, BaseException)]
    await stop.wait()
    still = sum(await asyncio.gather(*(is_open(r) for r, _ in conns)))
    for _, writer in conns:
        writer.close()
    return len(conns), still


async def is_open(reader):
    """Whether the server still holds the connection: a closed one reads EOF at once."""
    try:
        return await asyncio.wait_for(reader.read(1), 0.2) != b""
    except asyncio.TimeoutError:
        return True
    except OSError:
        return False


async def slow_client(host, port, src, line_interval, stop):
    """A request that trickles in: the request line, then one header line every line_interval
    seconds until stop is set (or the server closes)."""
    try:
        reader, writer = await connect(host, port, src)
    except (OSError, asyncio.TimeoutError):
        return
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        i = 0
        while not stop.is_set():
            await writer.drain()
            try:
                await asyncio.wait_for(stop.wait(), line_interval)
            except asyncio.TimeoutError:
                pass
            writer.write(f"X-Slow-{i}: {'x' * 20}\r\n".encode())
            i += 1
    except OSError:
        pass
    finally:
        writer.close()


async def with_idle(host, port, srcs, per_source, count, interval, settle=1.0):
    """Scrapes while per_source idle connections per source address are held.
    Returns (scrapes_ok, opened, still_open)."""
    stop = asyncio.Event()
    idle = asyncio.ensure_future(hold_idle(host, port, srcs, per_source, stop))
    await asyncio.sleep(settle)
    ok = await scrapes_during(host, port, count, interval)
    stop.set()
    opened, still = await idle
    return ok, opened, still


async def with_slow(host, port, srcs, per_source, count, interval, line_interval=2.0):
    """Scrapes while per_source slow clients per source address trickle their headers.
    Returns scrapes_ok."""
    stop = asyncio.Event()
    slow = [asyncio.ensure_future(slow_client(host, port, s, line_interval, stop))
            for s in srcs for _ in range(per_source)]
    await asyncio.sleep(1.0)
    ok = await scrapes_during(host, port, count, interval)
    stop.set()
    await asyncio.gather(*slow)
    return ok


async def concurrent(host, port, srcs, per_source):
    """per_source scrapes from each source address, all at once: how many succeeded."""
    res = await asyncio.gather(*(scrape(host, port, s, timeout=30.0)
                                 for s in srcs for _ in range(per_source)))
    return sum(res)
