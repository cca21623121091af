#!/usr/bin/env python3
"""bench/tsdb/query.py - the queries of the time-series benchmark, run against
InfluxDB 1.x (InfluxQL) or thinghz (SQL): each is run once to warm up, then
10 times; the median latency and the normalized answer go to a JSON file that
report.py compares across targets.

  query.py influx  PORT OUT.json
  query.py thinghz PORT OUT.json TOKEN
  query.py login   PORT EMAIL PASSWORD      prints a thinghz token
"""
import datetime
import http.client
import json
import statistics
import sys
import time
import urllib.parse

RUNS = 10
DEVICE = "d0042"

# (name, InfluxQL, thinghz SQL, shape): shape says how to normalize the answer:
#   scalar   one value
#   series   {time bucket (ns): value}
#   devices  {device: value}
# The data set ends when the load starts and spans less than a day, so
# "one day" covers all of it and "last hour" all of it when the set is short.
QUERIES = [
    ("mean 1m, 1 device, 1 day",
     "SELECT mean(temperature) FROM telemetry WHERE device = '%s' AND time > now() - 1d "
     "GROUP BY time(1m) fill(none)" % DEVICE,
     "SELECT bin(time, 1m) AS t, avg(temperature) FROM telemetry WHERE device = '%s' "
     "AND time > ago(1d) GROUP BY bin(time, 1m) ORDER BY t" % DEVICE,
     "series"),
    ("max all devices, last 1h",
     "SELECT max(temperature) FROM telemetry WHERE time > now() - 1h",
     "SELECT max(temperature) FROM telemetry WHERE time > ago(1h)",
     "scalar"),
    ("max per device, last 1h",
     "SELECT max(temperature) FROM telemetry WHERE time > now() - 1h GROUP BY device",
     "SELECT device, max(temperature) FROM telemetry WHERE time > ago(1h) GROUP BY device",
     "devices"),
    ("mean 1m all devices, last 1h",
     "SELECT mean(temperature) FROM telemetry WHERE time > now() - 1h "
     "GROUP BY time(1m) fill(none)",
     "SELECT bin(time, 1m) AS t, avg(temperature) FROM telemetry WHERE time > ago(1h) "
     "GROUP BY bin(time, 1m) ORDER BY t",
     "series"),
    ("last value per device",
     "SELECT last(temperature) FROM telemetry GROUP BY device",
     "SELECT device, last(temperature) FROM telemetry GROUP BY device",
     "devices"),
]


def to_ns(t):
    """A time as ns since the epoch: ints (s, ms, us or ns by magnitude) or RFC 3339."""
    if isinstance(t, (int, float)):
        t, a = int(t), abs(int(t))
        return t if a >= 10**17 else t * 10**3 if a >= 10**14 else \
            t * 10**6 if a >= 10**11 else t * 10**9
    s = str(t).strip()
    if s.lstrip("-").isdigit():
        return to_ns(int(s))
    frac = 0
    if "." in s:
        head, rest = s.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits):]
        frac = int((digits + "000000000")[:9])
        s = head + tz
    s = s.replace("Z", "+00:00").replace(" ", "T")
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * 10**9 + frac


def influx_norm(body, shape):
    res = body.get("results", [{}])[0]
    if "error" in res:
        raise RuntimeError(res["error"])
    series = res.get("series", [])
    if shape == "scalar":
        return series[0]["values"][0][1] if series else None
    if shape == "series":
        return {str(to_ns(v[0])): v[1] for s in series for v in s["values"]}
    return {s["tags"]["device"]: s["values"][0][1] for s in series}


def thz_norm(body, shape):
    cols, rows = body.get("columns", []), body.get("rows", [])
    if shape == "scalar":
        return rows[0][-1] if rows else None
    if shape == "series":
        return {str(to_ns(r[0])): r[-1] for r in rows}
    names = [c if isinstance(c, str) else c.get("name", "") for c in cols]
    di = names.index("device") if "device" in names else 0
    return {r[di]: r[-1] for r in rows}


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def req(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)


def run(target, port, out, token=None):
    c = Client(port)
    results = []
    for name, iql, sql, shape in QUERIES:
        if target == "influx":
            path = "/query?" + urllib.parse.urlencode({"db": "bench", "epoch": "ns", "q": iql})

            def once():
                st, data = c.req("GET", path)
                if st != 200:
                    raise RuntimeError("HTTP %d: %s" % (st, data[:300]))
                return influx_norm(json.loads(data), shape)
        else:
            payload = json.dumps({"sql": sql})
            hdr = {"Content-Type": "application/json", "Authorization": "Bearer " + token}

            def once():
                st, data = c.req("POST", "/api/v1/query", payload, hdr)
                if st != 200:
                    raise RuntimeError("HTTP %d: %s" % (st, data[:300]))
                return thz_norm(json.loads(data), shape)
        entry = {"name": name, "query": iql if target == "influx" else sql, "shape": shape}
        try:
            answer = once()
            times = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
            entry.update(ms=statistics.median(times) * 1000, answer=answer)
        except Exception as e:  # recorded, shown in the table, never fatal
            entry.update(error=str(e)[:300])
        results.append(entry)
    with open(out, "w") as f:
        json.dump(results, f)


def login(port, email, password):
    c = Client(port)
    st, data = c.req("POST", "/api/v1/auth/login",
                     json.dumps({"email": email, "password": password}),
                     {"Content-Type": "application/json"})
    if st != 200:
        sys.exit("login: HTTP %d: %s" % (st, data[:300]))
    print(json.loads(data)["token"])


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "login":
        login(int(a[1]), a[2], a[3])
    elif len(a) >= 3 and a[0] in ("influx", "thinghz"):
        run(a[0], int(a[1]), a[2], a[3] if len(a) > 3 else None)
    else:
        sys.exit(__doc__)
