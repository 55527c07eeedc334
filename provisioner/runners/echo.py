"""The echo provisioner: a template says how long each transition takes, what it logs, whether it fails.

Source: `{"start": {"duration_ms": 200, "logs": ["line", ...], "fail": false}, "stop": {...}, ...}`.
A transition left out succeeds at once with no logs; an import succeeds at once with one log line.
`fail` may be true or a message. As Coder's echo provisioner: for tests, demos and benchmarks.
"""

from __future__ import annotations

from typing import Any

from provisioner.execution import JobContext
from provisioner.runners import JobSpec, RunResult


class EchoProvisioner:
    name = "echo"

    def run(self, spec: JobSpec, ctx: JobContext) -> RunResult:
        if not spec.is_build:
            ctx.log("echo: template version imported")
            return RunResult()
        plan: Any = (spec.source or {}).get(spec.transition)
        if not isinstance(plan, dict):
            return RunResult()
        lines = [str(line) for line in plan.get("logs") or []]
        try:
            duration = max(0.0, float(plan.get("duration_ms") or 0) / 1000.0)
        except (TypeError, ValueError):
            duration = 0.0
        # Lines are spread over the duration, the first at once, so followers see a stream.
        step = duration / len(lines) if lines else duration
        for line in lines:
            ctx.log(line)
            if not ctx.sleep(step):
                return RunResult(error="stopped")
        if not lines and not ctx.sleep(duration):
            return RunResult(error="stopped")
        fail = plan.get("fail")
        if fail:
            message = fail if isinstance(fail, str) else f"echo: the template asked {spec.transition} to fail"
            ctx.log(message, level="error")
            return RunResult(error=message)
        return RunResult()
