"""Render `infer_distill.dag.PLAN` into the files the Helm chart and docker compose read.

    python pipelines/render.py            # write every generated file
    python pipelines/render.py --check    # exit 1 naming every stale one (tests/test_plan.py runs it)

- helm/infer-distill/files/workflow-template.yaml: the Argo WorkflowTemplate, built with hera: the
  DAG, its fan-outs, every step's command, inputs, outputs and retry strategy. The chart's
  templates/workflowtemplate.yaml completes it from the values (image, resources, GPUs,
  scheduling, S3, volumes, security).
- docker/compose.yaml: the quickstart as services (one per step and fan-out item) on a bridge
  network, with MinIO published on 127.0.0.1 so the host can read the bucket.
- docker/compose.cuda.yaml: compose.yaml on an NVIDIA GPU: the CUDA image, a GPU reserved for
  every GPU step, which refuses to run on the CPU (INFER_REQUIRE_CUDA=1).
- docker/compose.moto.yaml: the same on the host's network with a locally built moto S3 server,
  for machines that cannot pull images; docker/compose.test.yaml: that, at test size.

The services (one per teacher, shard and student run) follow the config at render time, while
the containers read it live from the bind mount: every stage service first checks that the
config's sha256 is the one it was rendered from, and refuses with exit 2 (re-render) otherwise.

The renderers are the package's (infer_distill.engines.argo, infer_distill.engines.compose; any
config: `infer-distill render argo|compose --config C --out DIR`); this script renders the
repository's files, the quickstart's. Edit the plan (or the renderers), never the generated files:
the test fails when one is stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infer_distill.config.loading import load_config
from infer_distill.engines import argo, compose

REPO = Path(__file__).resolve().parents[1]
GENERATED_BY = "Generated from infer_distill.dag by pipelines/render.py; do not edit (python pipelines/render.py)."
COMPOSE_CONFIG = "quickstart.yaml"       # configs/, mounted read-only at /config
COMPOSE_SETS = ["synthesis.subsets_per_shard=3"]                       # three synthesis services
# Two teacher epochs: after one, resnet_tiny is still at chance, which a run refuses (teachers.min_accuracy_over_chance).
TEST_SETS = ["teachers.epochs=2", "synthesis.iterations=3", "students.epochs=2", "device=cpu"]

COMPOSE_HEADERS = {
    "compose.yaml": """\
# The quickstart DAG as a local dry run: MinIO (quay.io) on a bridge network, published on
# 127.0.0.1 only, and one service per step and fan-out item, each `infer-distill stage ...`.
#   cp docker/.env.example docker/.env                  # once: pick a password
#   docker/build.sh                                     # the infer-distill:cpu image
#   docker compose -f docker/compose.yaml up -d && docker compose -f docker/compose.yaml wait report
#   AWS_ENDPOINT_URL=http://127.0.0.1:9000 infer-distill show s3://infer/quickstart/report   # from the host
#   docker compose -f docker/compose.yaml down -v
""",
    "compose.cuda.yaml": """\
# compose.yaml on an NVIDIA GPU: the infer-distill:cuda image, and a GPU reserved for every GPU
# step (the NVIDIA Container Toolkit must be installed), which refuses to run on the CPU when CUDA
# is unusable (INFER_REQUIRE_CUDA=1; README, GPU: the driver it needs).
#   docker/build.sh cuda
#   docker compose -f docker/compose.cuda.yaml up -d && docker compose -f docker/compose.cuda.yaml wait report
""",
    "compose.moto.yaml": """\
# The quickstart DAG with a moto S3 server built here (docker/build.sh cpu moto), every service on
# the host's network and 127.0.0.1 only: for machines that cannot pull images.
#   docker compose -f docker/compose.moto.yaml up -d && docker compose -f docker/compose.moto.yaml wait report
""",
    "compose.test.yaml": """\
# docker/compose.moto.yaml at test size (tests/test_containers.py): the same DAG, fewer epochs
# and iterations.
""",
}




def rendering(name: str) -> compose.Rendering:
    s3, sets, cuda = {"compose.yaml": ("minio", COMPOSE_SETS, False), "compose.cuda.yaml": ("minio", COMPOSE_SETS, True),
                      "compose.moto.yaml": ("moto", COMPOSE_SETS, False),
                      "compose.test.yaml": ("moto", COMPOSE_SETS + TEST_SETS, False)}[name]
    return compose.Rendering(name=name, config=(REPO / "configs" / COMPOSE_CONFIG).read_bytes(), config_name=COMPOSE_CONFIG,
                             mount="../configs", rerender="python pipelines/render.py", s3=s3, sets=sets, cuda=cuda,
                             shown_as=f"docker/{name}")


def render_compose(name: str) -> str:
    r = rendering(name)
    return compose.render(load_config(REPO / "configs" / COMPOSE_CONFIG, r.sets), r, COMPOSE_HEADERS[name], GENERATED_BY)


def generated() -> dict[Path, str]:
    files = {REPO / "helm" / "infer-distill" / "files" / "workflow-template.yaml": argo.render_workflow_template(GENERATED_BY)}
    for name in COMPOSE_HEADERS:
        files[REPO / "docker" / name] = render_compose(name)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    stale = []
    for path, text in generated().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
