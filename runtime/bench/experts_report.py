"""report.md of a two-expert bench (runtime/bench/experts.py): per expert, then the whole video per schedule."""

from __future__ import annotations

from typing import Any


def _ms(stat: dict[str, Any]) -> str:
    ci = stat.get("median_ci95_ms")
    return f"{stat['median_ms']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{stat['median_ms']:.1f} [n too small]"


def _quality(q: dict[str, Any] | None) -> str:
    if q is None:
        return "not measured (artifact)"
    return f"{q['rel_err_max']:.2e} {'pass' if q['passed'] else 'NOT equal'} ({q['gate']:g})"


def _load(ld: dict[str, Any]) -> str:
    if not ld["n"]:
        return "-"
    ci = ld.get("ci95_s")
    return f"{ld['n']} x {ld['median_s']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _avg(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def render_experts_report(results: dict[str, Any]) -> str:
    p = results["payload"]
    spec, sh = results["specs"]["bench"], p["shape"]
    resident = p["resident"]
    lora = "; ".join(f"{e} r{x['rank']} {x['mode']} ({x['targets']}, seed {x['seed']})"
                     for e, x in p["lora"].items() if x) or "the artifact's stacks"
    L = [f"# wanrt bench: {spec['model'] if not spec.get('engine_dir') else spec['engine_dir']}, Wan2.2's two "
         f"experts, resident: {resident}", "",
         f"Command: `{results.get('command', '')}`  ",
         f"Shape {sh['frames']}x{sh['height']}x{sh['width']} (latent {'x'.join(map(str, sh['latent']))}), batch 1; "
         f"{spec['repeats']} rounds of one CFG step per expert, order alternating; {p['device']}, threads "
         f"{p['threads']}; boundary {p['boundary_ratio']}; LoRA per expert: {lora}. Wall {p['wall_s']:.0f} s; load "
         f"average (1/5/15 min) at start {_avg(p['load_average']['start'])}, end {_avg(p['load_average']['end'])}.",
         "",
         "## Per expert", "",
         "Forward: median ms [95% CI of the median] over warm steps. Loads: n x median s [95% CI] (with both "
         "resident, the two at start). Cold step: the first step after a load (one resident).", "",
         "| backend | expert | forward ms | n | rel. error vs eager fp32 | loads s | cold step ms | reload s |",
         "|---|---|---|---|---|---|---|---|"]
    for r in p["runs"]:
        for e, x in r["experts"].items():
            cold, reload = x["loads"]["cold_step_median_ms"], x["reload_s"]
            L.append(f"| {r['backend']} ({r['precision']}) | {e} | {_ms(x['latency']['forward'])} | "
                     f"{x['latency']['forward']['n']} | {_quality(x['quality'])} | {_load(x['loads'])} | "
                     f"{'-' if cold is None else f'{cold:.1f}'} | {'-' if reload is None else f'{reload:.2f}'} |")
    L += ["", "## Whole video per schedule", "",
          "DiT seconds = each expert's forwards (its steps by diffusers' boundary split on the tiny pipeline's "
          "scheduler, x2 with CFG) x its median forward; interval: the ends of each median's 97.5% interval. "
          "Reload: one resident, every video after the first loads both experts (high again, then low); not in it: "
          "VAE, encoders, scheduler.", "",
          "| backend | schedule | steps high/low | forwards high/low | DiT s [95% CI] | loads | reload s | video s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in p["runs"]:
        for name, v in r["per_video"].items():
            ci = v["dit_ci95_s"]
            L.append(f"| {r['backend']} | {name} | {v['expert_steps']['high']}/{v['expert_steps']['low']} | "
                     f"{v['forwards']['high']}/{v['forwards']['low']} | {v['dit_s']:.2f}"
                     + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" | {v['loads_per_video']} | "
                     f"{v['reload_s']:.2f} | {v['video_s']:.2f} |")
    L += ["", "Expert loads per backend (the whole run): "
          + "; ".join(f"{r['backend']} {r['loads']['count']}, {r['loads']['seconds']:.2f} s, at most "
                      f"{r['loads']['peak_alive']} alive" for r in p["runs"]), ""]
    return "\n".join(L)
