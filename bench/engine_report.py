"""The engine benchmark's results as a Markdown table."""

from __future__ import annotations


def markdown(doc: dict) -> str:
    gib = 1024 ** 3

    def fmt(value, spec=".3f", scale=1.0):
        return "" if value is None else format(value / scale, spec)

    lines = []
    if doc.get("label"):
        lines.append(f"**{doc['label']}** (device: {doc.get('device')})\n")
    else:
        lines.append(f"Device: {doc.get('device')}, dense fp16 peak "
                     f"{doc.get('dense_fp16_peak_tflops')} TFLOP/s\n")
    for model, work in doc.get("workloads", {}).items():
        lines.append(f"- {model}: {work['size']} px, {work['steps']} steps x strength "
                     f"{work['strength']} = {work['denoising_steps']} denoising steps, "
                     f"guidance {work['guidance']}")
    lines.append("")
    lines.append("| model | case | batch | images | images/s | s/image | vs case 1 | "
                 "vs case 2 | warm-up s | load s | alloc peak GiB | device peak GiB | "
                 "GFLOP/image | TFLOP/s | % of peak | max abs diff vs case 1 | status |")
    lines.append("|" + "---|" * 17)
    for case in doc["cases"]:
        fraction = case.get("fraction_of_peak")
        lines.append("| " + " | ".join([
            case["model"], case["name"], str(case["batch_size"]), str(case["images"]),
            fmt(case["images_per_s"]), fmt(case["s_per_image"]),
            fmt(case["vs_original"], ".2f"), fmt(case["vs_original_lean"], ".2f"),
            fmt(case["warmup_s"], ".2f"), fmt(case["load_s"], ".2f"),
            fmt(case["peak_allocated_bytes"], ".2f", gib),
            fmt(case["device_used_peak_bytes"], ".2f", gib),
            fmt(case["flops_per_image"], ".1f", 1e9), fmt(case["achieved_tflops"], ".2f"),
            "" if fraction is None else f"{100 * fraction:.1f}",
            fmt(case["max_abs_diff_vs_original"], ".0f"), case["status"],
        ]) + " |")
    return "\n".join(lines) + "\n"
