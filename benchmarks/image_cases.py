"""Image benchmarks: pull+unpack vs ``ctr image pull``, import vs ``ctr image import``, and the
lifecycle of a container of an image vs one of a bundle rootfs.

Each pull or import moves content containerd has never seen (a fresh salt per iteration: its
content store is shared between namespaces), from Debian's docker-registry on 127.0.0.1 started
here; building and pushing the images happens before any timing.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

from cases import Env, Result, interleave, median_ms, sdk_client, spec
from refs import check

from libcontainerd import _testing_images as ti
from libcontainerd import oci

_BIG = 8 << 20  # a middle layer of incompressible bytes, so that the transfer counts


def _layers(env: Env, salt: str) -> list[bytes]:
    lower, upper = ti.image_layers(env.rootfs, salt)
    middle = ti.tar_of([(ti._info("blob", size=_BIG), os.urandom(_BIG))])
    return [lower, middle, upper]


def _ctr(env: Env, namespace: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ctr", "-a", env.address, "-n", namespace, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def bench_pull(env: Env) -> list[Result]:
    n = env.iterations(8, 2)
    with ti.Registries(os.path.join(env.work, "registry")) as regs, sdk_client(env, "pull") as client:
        refs = []
        for i in range(2 * (n + 1)):
            layout = os.path.join(env.work, f"pull-layout-{i}")
            ti.build_layout(layout, _layers(env, uuid.uuid4().hex))
            regs.push_layout(layout, f"bench{i}:latest")
            refs.append(f"{regs.plain.address}/bench{i}:latest")
        ref_ns = env.namespace("pull-ref")
        sdk_refs, ctr_refs = iter(refs[0::2]), iter(refs[1::2])

        def sdk(i: int) -> None:
            client.pull(next(sdk_refs), plain_http=True)

        def ctr_pull(i: int) -> None:
            check(_ctr(env, ref_ns, "images", "pull", "--plain-http", next(ctr_refs)), "ctr image pull")

        times = interleave({"sdk": sdk, "ctr": ctr_pull}, n)
    sdk_ms, ctr_ms = median_ms(times["sdk"]), median_ms(times["ctr"])
    return [Result("pull", "pull+unpack, 3 layers (~9.5 MiB), local registry", "ms", sdk_ms,
                   "ctr image pull --plain-http", ctr_ms, "<= 1.10x", sdk_ms <= ctr_ms * 1.10, n=n,
                   note="fresh content each time; ctr: Go process start included")]


def bench_import(env: Env) -> list[Result]:
    n = env.iterations(8, 2)
    archives = []
    for i in range(2 * (n + 1)):
        path = os.path.join(env.work, f"import-{i}.tar")
        ti.write_docker_save(path, _layers(env, uuid.uuid4().hex), [f"bench/import{i}:latest"])
        archives.append(path)
    with sdk_client(env, "import") as client:
        ref_ns = env.namespace("import-ref")
        sdk_archives, ctr_archives = iter(archives[0::2]), iter(archives[1::2])

        def sdk(i: int) -> None:
            client.import_images(next(sdk_archives))

        def ctr_import(i: int) -> None:
            check(_ctr(env, ref_ns, "images", "import", next(ctr_archives)), "ctr image import")

        times = interleave({"sdk": sdk, "ctr": ctr_import}, n)
    sdk_ms, ctr_ms = median_ms(times["sdk"]), median_ms(times["ctr"])
    return [Result("import", "docker save archive, 3 layers (~11 MiB), + unpack", "ms", sdk_ms,
                   "ctr image import", ctr_ms, "<= 1.10x", sdk_ms <= ctr_ms * 1.10, n=n,
                   note="fresh content each time; ctr: Go process start included")]


def bench_image_lifecycle(env: Env) -> list[Result]:
    n = env.iterations(30, 5)
    archive = os.path.join(env.work, "lifecycle-image.tar")
    ti.write_docker_save(archive, ti.image_layers(env.rootfs, uuid.uuid4().hex), ["bench/lifecycle:latest"])
    with sdk_client(env, "image-life") as client:
        image = client.import_images(archive)[0]
        image_spec = oci.image_spec(image, ["true"])
        rootfs_spec = spec(env, "true")

        def run(cid: str, s: dict[str, Any], **kw: Any) -> None:
            c = client.new_container(cid, s, **kw)
            t = c.start()
            t.wait()
            t.delete()
            c.delete()

        times = interleave({"image": lambda i: run(f"img-{i}", image_spec, image=image),
                            "rootfs": lambda i: run(f"dir-{i}", rootfs_spec)}, n)
    img_ms, dir_ms = median_ms(times["image"]), median_ms(times["rootfs"])
    return [Result("image-lifecycle", "create>start>wait>delete `true`, image snapshot", "ms", img_ms,
                   "bundle rootfs dir", dir_ms, n=n, note="+ snapshot prepare, mounts and remove")]
