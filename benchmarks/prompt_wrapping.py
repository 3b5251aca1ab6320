"""Does the image prompt's wording cost the zoo's UNet the attributes it names?

    uv run python benchmarks/prompt_wrapping.py --run runs/default [--combos 32] [--images-per-combo 16]

The zoo's UNet is trained on bare captions ("a red striped dress"). A prompt without tokens is that
caption in the ``subject_first`` form (``generator.image.prompt_form``, the default), and the caption
after the dataset's noun in the ``noun_first`` form ("a product: a red striped dress"; rounds 1 to
3; ``pmg.generator.prompts.prompt_templates``). On the run's zoo, the judge reads the prompted colour
and pattern off images of the same combinations drawn from the same noise (paired) in each form, at
the generator's guidance and sampler steps: on the held-out combinations (``zoo.holdout``, never
trained on; the zoo's record) and on ``--combos`` combinations of items it trained on, with the run's
generator settings. Each rate is over images; the paired
difference (noun_first − subject_first) has a 95% bootstrap interval over combinations. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pmg.benchmark_targets import Targets, parse_args_with_check, print_result
from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.evaluate.intervals import bootstrap_interval
from pmg.generator import GeneratorConfig
from pmg.generator.config import ImagePromptForm
from pmg.generator.prompts import prompt_templates
from pmg.runs import RunDirectory, RunError
from pmg.zoo import Zoo, load_zoo
from pmg.zoo.corpus import attribute_caption
from pmg.zoo.evaluation import generate_images

ATTRIBUTES = ("colour", "pattern")
# No target: it measures where the prompt's wording costs fidelity, for the generation targets' account.
TARGETS: Targets = {}


def _seen_combos(data: InteractionData, zoo: Zoo, count: int, seed: int) -> list[dict[str, str]]:
    """``count`` combinations (of the held-out combinations' attributes) of items the zoo trained on, seeded."""
    names = list(zoo.heldout_combos[0])
    held = set(zoo.heldout_items)
    combos = {tuple(item.attributes.get(a, "") for a in names) for item in data.items if item.image is not None and item.item_id not in held}
    ordered = sorted(c for c in combos if all(c))
    chosen = np.random.default_rng(seed).choice(len(ordered), size=min(count, len(ordered)), replace=False)
    return [dict(zip(names, ordered[int(i)], strict=True)) for i in sorted(chosen)]


def _hits(pipe, judge, prompts: list[str], combos: list[dict[str, str]], per: int, steps: int, guidance: float) -> dict[str, np.ndarray]:
    """{attribute: float [combos]}: per combination, the share of its images showing it."""
    images = generate_images(pipe, [p for p in prompts for _ in range(per)], steps=steps, guidance_scale=guidance, seed=1)
    found = judge.predict_values(images.clamp(-1, 1))
    wanted = [c for c in combos for _ in range(per)]
    return {a: np.array([f[a] == w[a] for f, w in zip(found, wanted, strict=True)], dtype=float).reshape(len(combos), per).mean(1)
            for a in ATTRIBUTES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--combos", type=int, default=32, help="seen combinations (of training items)")
    parser.add_argument("--images-per-combo", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args_with_check(parser, TARGETS)

    run = RunDirectory(args.run)
    data, _ = load_prepared(run)
    # The run's own generator settings (its guidance, steps and subject) once its generator stage has run.
    recorded = run.stage_dir("generator") / "config.yaml"
    generator = load_config(GeneratorConfig, recorded if recorded.is_file() else None, [])
    forms = {form: prompt_templates(data, generator.image.default_subject, form=form).image_no_tokens for form in ImagePromptForm}
    zoo = load_zoo(run)
    if not zoo.heldout_combos or zoo.judge is None:
        raise RunError(f"{run.root}: the zoo has no held-out attribute combinations or no judge to read them")
    pipe, judge = zoo.load_sdxl(), zoo.load_judge()
    sets = {"heldout": zoo.heldout_combos, "seen": _seen_combos(data, zoo, args.combos, args.seed)}
    steps, guidance = generator.sample.num_inference_steps, generator.sample.guidance_scale
    result: dict = {"run": str(args.run), "templates": forms, "guidance_scale": guidance, "steps": steps,
                    "images_per_combo": args.images_per_combo}
    for name, combos in sets.items():
        captions = [attribute_caption(c) for c in combos]
        hits = {form: _hits(pipe, judge, [template.format(subject=c) for c in captions], combos, args.images_per_combo, steps, guidance)
                for form, template in forms.items()}
        first, noun = hits[ImagePromptForm.subject_first], hits[ImagePromptForm.noun_first]
        section = {"combos": len(combos)}
        for a in ATTRIBUTES:
            low, high = bootstrap_interval(noun[a] - first[a])
            section[a] = {"subject_first": float(first[a].mean()), "noun_first": float(noun[a].mean()),
                          "noun_first_minus_subject_first": float((noun[a] - first[a]).mean()), "interval": [low, high]}
            print(f"[{name}] {a}: subject first {first[a].mean():.3f}, noun first {noun[a].mean():.3f}, "
                  f"difference {float((noun[a] - first[a]).mean()):+.3f} [{low:+.3f}, {high:+.3f}] over {len(combos)} combinations",
                  flush=True)
        result[name] = section
    print_result(result, TARGETS, args.check)


if __name__ == "__main__":
    main()
