"""The same image work as `magpie models bench efficientnet-lite0` in Python: decode with
Pillow, the same preprocessing (shorter side 224 bicubic, centre crop, (x-127)/128), and
EfficientNet-Lite0 run by onnxruntime. The ONNX graph is built here from the same
efficientnet-lite0.pth (legacy torch.save, read without torch) with plain Conv nodes,
so the two sides run the same weights.

usage: python lite0_onnx.py MODEL.pth IMAGE_DIR [--threads 1,2]
needs: pip install numpy onnx onnxruntime pillow
"""
import collections
import os
import pickle
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320)]


def load_legacy(path):
    """State dict of a legacy (non-zip) torch.save file, as numpy arrays."""
    f = open(path, "rb")
    for _ in range(3):
        pickle.load(f)
    storages = {}

    class Ref:
        def __init__(self, key, dtype, off, size, stride):
            self.key, self.dtype, self.off, self.size, self.stride = key, dtype, off, size, stride

    class U(pickle.Unpickler):
        def find_class(self, mod, name):
            if name == "OrderedDict":
                return collections.OrderedDict
            if name == "_rebuild_tensor_v2":
                return lambda st, off, size, stride, *a: Ref(st[0], st[1], off, size, stride)
            if name.endswith("Storage"):
                return name
            raise ValueError(f"{mod}.{name}")

        def persistent_load(self, pid):
            return (pid[2], {"FloatStorage": np.float32, "LongStorage": np.int64}[pid[1]])

    sd = U(f).load()
    keys = pickle.load(f)
    for k in keys:
        n = int(np.frombuffer(f.read(8), np.int64)[0])
        dtype = [r.dtype for r in sd.values() if r.key == k][0]
        storages[k] = np.frombuffer(f.read(n * np.dtype(dtype).itemsize), dtype)
    out = {}
    for name, r in sd.items():
        a = storages[r.key]
        out[name] = np.lib.stride_tricks.as_strided(
            a[r.off:], shape=r.size, strides=[s * a.itemsize for s in r.stride]).copy()
    return out


def build_onnx(sd):
    nodes, inits = [], []
    count = [0]

    def name(p):
        count[0] += 1
        return f"{p}_{count[0]}"

    def conv_bn(x, conv, bn, stride, groups, act, hw):
        w = sd[conv + ".weight"].astype(np.float32)
        g, b = sd[bn + ".weight"], sd[bn + ".bias"]
        m, v = sd[bn + ".running_mean"], sd[bn + ".running_var"]
        scale = g / np.sqrt(v + 1e-3)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (b - m * scale).astype(np.float32)
        wn, bname = name("w"), name("b")
        inits.append(numpy_helper.from_array(wf, wn))
        inits.append(numpy_helper.from_array(bf, bname))
        k = w.shape[2]
        out_hw = -(-hw // stride)
        total = max((out_hw - 1) * stride + k - hw, 0)
        pads = [total // 2, total // 2, total - total // 2, total - total // 2]
        y = name("conv")
        nodes.append(helper.make_node("Conv", [x, wn, bname], [y], strides=[stride, stride],
                                      pads=pads, group=groups, kernel_shape=[k, k]))
        if act:
            z = name("relu6")
            nodes.append(helper.make_node("Clip", [y, "zero", "six"], [z]))
            y = z
        return y, out_hw

    inits.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    inits.append(numpy_helper.from_array(np.array(6, np.float32), "six"))
    x, hw = conv_bn("input", "_conv_stem", "_bn0", 2, 1, True, 224)
    i = 0
    for reps, k, stride, expand, cin0, cout in STAGES:
        for r in range(reps):
            cin = cin0 if r == 0 else cout
            s = stride if r == 0 else 1
            p = f"_blocks.{i}"
            h = x
            if expand != 1:
                h, _ = conv_bn(h, p + "._expand_conv", p + "._bn0", 1, 1, True, hw)
            h, nhw = conv_bn(h, p + "._depthwise_conv", p + "._bn1", s, cin * expand, True, hw)
            h, _ = conv_bn(h, p + "._project_conv", p + "._bn2", 1, 1, False, nhw)
            if s == 1 and cin == cout:
                y = name("add")
                nodes.append(helper.make_node("Add", [h, x], [y]))
                h = y
            x, hw = h, nhw
            i += 1
    x, _ = conv_bn(x, "_conv_head", "_bn1", 1, 1, True, hw)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled4"]))
    nodes.append(helper.make_node("Flatten", ["pooled4"], ["feature"]))
    inits.append(numpy_helper.from_array(sd["_fc.weight"].astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(sd["_fc.bias"].astype(np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["feature", "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 1280]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def preprocess(path):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 224 / min(w, h)
    nw, nh = max(224, round(w * s)), max(224, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    x0, y0 = (nw - 224) // 2, (nh - 224) // 2
    im = im.crop((x0, y0, x0 + 224, y0 + 224))
    a = (np.asarray(im, np.float32) - 127.0) / 128.0
    return a.transpose(2, 0, 1)[None]


def main():
    pth, img_dir = sys.argv[1], sys.argv[2]
    threads = [1, 2]
    if "--threads" in sys.argv:
        threads = [int(t) for t in sys.argv[sys.argv.index("--threads") + 1].split(",")]
    files = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir)
                   if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".gif")))
    model = build_onnx(load_legacy(pth))
    for t in threads:
        # One session per worker, one intra-op thread each, images split among workers:
        # the same scheme as magpie's (one image per thread).
        from concurrent.futures import ThreadPoolExecutor
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sessions = [ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                    for _ in range(t)]
        sessions[0].run(None, {"input": preprocess(files[0])})
        top1 = {}

        def work(wid):
            sess = sessions[wid]
            for k in range(wid, len(files), t):
                feat, logits = sess.run(None, {"input": preprocess(files[k])})
                top1[k] = int(np.argmax(logits))

        start = time.perf_counter()
        with ThreadPoolExecutor(t) as ex:
            list(ex.map(work, range(t)))
        secs = time.perf_counter() - start
        print(f"onnxruntime {ort.__version__} + Pillow: {len(files)} images, {t} worker(s) x 1 "
              f"thread: {len(files) / secs:.1f} images/s")
        if len(files) == 1000:
            acc = sum(top1[k] == k for k in range(1000)) / 1000
            print(f"  top-1 on the ImageNet sample (file order = class index): {acc:.3f}")


if __name__ == "__main__":
    main()
