import time
from typing import Any
import httpx


async def test_bench(client: httpx.AsyncClient, make_project: Any) -> None:
    project = (await make_project({"x": {"type": "int", "default": 0}, "y": {"type": "float", "default": 0.0}}))["name"]
    for n in (1000, 10000, 100000):
        t0 = time.perf_counter()
        r = await client.post("/api/v1/sweeps", json={"project": project, "parameters": {"x": {"min": 1, "max": n // 10, "steps": n // 10}, "y": {"min": 0, "max": 1, "steps": 10}}}, timeout=300)
        dt = time.perf_counter() - t0
        assert r.status_code == 201, r.text
        print(f"\nBENCH grid {r.json()['count']} trials: {dt:.2f} s")
        t0 = time.perf_counter()
        r = await client.get(f"/api/v1/sweeps/{r.json()['id']}")
        print(f"BENCH get: {time.perf_counter() - t0:.3f} s")
