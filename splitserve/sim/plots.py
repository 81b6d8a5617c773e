"""PNG plots: a profile's measured points against its fits; a plan's goodput frontier."""

from __future__ import annotations

from pathlib import Path

from splitserve.sim.profile import Profile


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_profile(profile: Profile, path: str | Path) -> Path:
    plt = _pyplot()
    fig, (ax_p, ax_d, ax_t) = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = profile.points.get("steps", [])
    pre = [p for p in steps if p["kind"] == "prefill"]
    ax_p.scatter([p["num_tokens"] for p in pre], [p["seconds"] * 1e3 for p in pre], s=12, label="measured")
    xs = sorted({p["num_tokens"] for p in pre} | {1})
    ax_p.plot(xs, [profile.step.prefill_s(x) * 1e3 for x in xs], "r-", label="fit (start 0)")
    ax_p.set(xlabel="prompt tokens in the step", ylabel="step ms", title="prefill step", xscale="log", yscale="log")
    dec = [p for p in steps if p["kind"] == "decode"]
    for ctx in sorted({round(p["decode_context"] / p["num_seqs"]) - 3 for p in dec}):
        pts = [p for p in dec if round(p["decode_context"] / p["num_seqs"]) - 3 == ctx]
        bs = [p["num_seqs"] for p in pts]
        line = ax_d.plot(bs, [p["seconds"] * 1e3 for p in pts], "o", label=f"context {ctx}")[0]
        ax_d.plot(bs, [profile.step.decode_s(b, ctx) * 1e3 for b in bs], "-", color=line.get_color())
    ax_d.set(xlabel="batch size", ylabel="step ms", title="decode step (points: measured, lines: fit)")
    for backend, pts in profile.points.get("transfer", {}).items():
        line = ax_t.plot([b / 1e6 for b, _ in pts], [s * 1e3 for _, s in pts], "o", label=backend)[0]
        fit = profile.transfer[backend]
        ax_t.plot([x / 1e6 for x in fit.xs], [y * 1e3 for y in fit.ys], "-", color=line.get_color())
    ax_t.set(xlabel="MB", ylabel="ms", title="KV transfer", xscale="log", yscale="log")
    for ax in (ax_p, ax_d, ax_t):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"profile: {profile.meta.get('model', '?')}, {profile.meta.get('threads', '?')} thread(s), "
                 f"KV capacity {profile.engine.kv_capacity_tokens} tokens")
    return _save(plt, fig, path)


def plot_frontier(candidates, frontier, chosen, path: str | Path, title: str = "") -> Path:
    """Goodput (req/s within the SLOs) against cost for every simulated configuration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for policy in sorted({c.policy for c in candidates}):
        pts = [c for c in candidates if c.policy == policy]
        ax.scatter([c.cost for c in pts], [c.goodput for c in pts], s=18, alpha=0.7, label=policy)
    ax.plot([c.cost for c in frontier], [c.goodput for c in frontier], "k-", lw=1, label="frontier")
    if chosen is not None:
        ax.scatter([chosen.cost], [chosen.goodput], s=120, facecolors="none", edgecolors="r", lw=2,
                   label=f"chosen P={chosen.prefill} D={chosen.decode} M={chosen.mixed} ({chosen.policy})")
    ax.set(xlabel="cost (sum of node costs)", ylabel="goodput (req/s within SLOs)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
