"""A DCGM-exporter-format metrics page whose GPU utilisation the test sets.

The NVIDIA DCGM exporter (:9400/metrics) reports DCGM_FI_DEV_GPU_UTIL in percent and
DCGM_FI_PROF_GR_ENGINE_ACTIVE as a ratio, per GPU, with labels gpu, UUID, modelName, Hostname.
`fail = True` makes it answer 500, as an exporter that lost the GPU does.
"""

from __future__ import annotations

from aiohttp import web

from tests.standin_server import ThreadedServer


class DCGMStandIn(ThreadedServer):
    def __init__(
        self, util_percent: float = 0.0, fb_used_mib: float = 1000, fb_free_mib: float = 79000
    ) -> None:
        self.util_percent = util_percent
        self.fb_used_mib = fb_used_mib
        self.fb_free_mib = fb_free_mib
        self.fail = False
        self.scrapes = 0
        super().__init__("dcgm-standin")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.fail:
            return web.Response(status=500, text="dcgm: no GPU found")
        labels = 'gpu="0",UUID="GPU-5fd4f087-86f3-7a43-b711-4771313afc50",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"'
        lines = [
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
            f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {self.util_percent:g}",
            "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).",
            "# TYPE DCGM_FI_DEV_FB_USED gauge",
            f"DCGM_FI_DEV_FB_USED{{{labels}}} {self.fb_used_mib:g}",
            "# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).",
            "# TYPE DCGM_FI_DEV_FB_FREE gauge",
            f"DCGM_FI_DEV_FB_FREE{{{labels}}} {self.fb_free_mib:g}",
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
            f"DCGM_FI_DEV_POWER_USAGE{{{labels}}} 312.5",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
