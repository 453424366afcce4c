"""Reporter ``memory``: what the seed notebooks print about GPU memory, plus host RSS on a CPU."""

from __future__ import annotations

import resource
import sys
import time

from recipetune import Options, ReportBlock, Reporter, hookimpl


def host_peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class MemoryOptions(Options):
    plot: bool = True
    """Draw memory.png beside the report."""


class MemoryReporter(Reporter):
    """GPU name and memory, reserved memory before and at the peak of training, percentages, runtime, host peak RSS."""

    name = "memory"
    Options = MemoryOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.values: dict[str, float | str] = {}
        self._train_started = 0.0

    def on_stage_start(self, run, stage):
        if stage != "train":
            return
        import torch

        self._train_started = time.perf_counter()
        self.values["host_rss_before_train_gib"] = round(host_peak_rss_gib(), 3)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            self.values["gpu"] = props.name
            self.values["gpu_total_gib"] = round(props.total_memory / 2**30, 3)
            self.values["start_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            torch.cuda.reset_peak_memory_stats()

    def on_stage_end(self, run, stage, result):
        if stage != "train":
            return
        import torch

        self.values["train_runtime_s"] = round(time.perf_counter() - self._train_started, 2)
        self.values["host_peak_rss_gib"] = round(host_peak_rss_gib(), 3)
        if torch.cuda.is_available():
            total = self.values["gpu_total_gib"]
            peak = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            start = self.values["start_reserved_gib"]
            self.values.update(
                peak_reserved_gib=peak, peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                training_reserved_gib=round(max(peak - start, 0.0), 3),
                peak_reserved_pct=round(100 * peak / total, 2), training_reserved_pct=round(100 * max(peak - start, 0) / total, 2))
        run.state["memory"] = dict(self.values)

    def render(self, run):
        v = self.values
        if not v:
            return None
        rows = []
        if "gpu" in v:
            rows += [f"GPU = {v['gpu']}. Max memory = {v['gpu_total_gib']} GB.",
                     f"{v['start_reserved_gib']} GB of memory reserved before training.",
                     f"{v['train_runtime_s']} seconds used for training ({v['train_runtime_s'] / 60:.2f} minutes).",
                     f"Peak reserved memory = {v['peak_reserved_gib']} GB ({v['peak_reserved_pct']} % of max memory).",
                     f"Peak reserved memory for training = {v['training_reserved_gib']} GB ({v['training_reserved_pct']} % of max memory).",
                     f"Peak allocated memory = {v['peak_allocated_gib']} GB."]
        else:
            rows += ["No CUDA GPU: training ran on the CPU.",
                     f"{v.get('train_runtime_s', 0)} seconds used for training."]
        rows.append(f"Host peak RSS = {v.get('host_peak_rss_gib')} GiB (before training: {v.get('host_rss_before_train_gib')} GiB).")
        markdown = "\n".join(f"- {r}" for r in rows)
        files = []
        if self.options.plot:
            png = self._plot(run)
            if png:
                files.append(png)
                markdown += f"\n\n![memory]({png.name})"
        return ReportBlock("Memory", markdown, files, data=dict(v))

    def _plot(self, run):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from recipetune.atomic import atomic_path

        v = self.values
        labels, values = [], []
        for key, label in (("start_reserved_gib", "GPU reserved\nbefore train"), ("peak_reserved_gib", "GPU peak\nreserved"),
                           ("peak_allocated_gib", "GPU peak\nallocated"), ("host_rss_before_train_gib", "host RSS\nbefore train"),
                           ("host_peak_rss_gib", "host peak\nRSS")):
            if key in v:
                labels.append(label)
                values.append(float(v[key]))
        if not values:
            return None
        fig, ax = plt.subplots(figsize=(6, 3), dpi=110)
        ax.bar(labels, values, color="#4c72b0")
        ax.set_ylabel("GiB")
        for i, val in enumerate(values):
            ax.text(i, val, f"{val:.2f}", ha="center", va="bottom", fontsize=8)
        fig.tight_layout()
        path = run.output_dir / "memory.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return path


@hookimpl
def register_reporters(register):
    register(MemoryReporter)
