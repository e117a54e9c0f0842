//! The engine's `kernel-build` stage: the run's side of `kernel_stage` (options rendered, the
//! build on a blocking thread, its record in the run's steps, the tree as a signed artifact).

use std::collections::BTreeMap;

use nexus_lib::api::pipeline::{KernelBuildStage, Trust};
use serde_json::json;

use super::super::kernel_stage::{self, KernelStageDirs};
use super::super::progress::Progress;
use super::{Artifact, Run, StageError, blocking};

impl Run<'_> {
    pub(super) async fn kernel_build(
        &mut self,
        index: usize,
        count: usize,
        b: &KernelBuildStage,
        progress: &Progress,
    ) -> Result<(), StageError> {
        let source = self.file(&b.source, None)?;
        let p = progress.stage(index, count, "kernel-build", source.shown.clone());
        let mut options = BTreeMap::new();
        for (key, value) in &b.options {
            let value = self.render(value)?;
            options.insert(key.clone(), value);
        }
        let into = self.out_path(&b.into)?;
        let dirs = KernelStageDirs {
            out_root: (self.engine.settings.kernel_build_dir.clone())
                .unwrap_or_else(|| self.engine.dirs.kernel_build()),
            key_dir: self.engine.dirs.keys(),
        };
        let (reporter, cancel) = (p.clone(), self.cancel.clone());
        let built = blocking(move || {
            Ok(kernel_stage::run(
                &dirs,
                &source.path,
                &options,
                &into,
                &reporter,
                &cancel,
            )?)
        })
        .await?;
        let release = &built.record.kernel_release;
        p.note(format!(
            "{} {release} ({}), signed by {}",
            if built.cached { "found built" } else { "built" },
            &built.record.key[..12],
            built.key
        ));
        let version = format!("{release}-{}", &built.record.key[..12]);
        self.vars.insert("kernel_release".into(), release.clone());
        self.vars.insert("kernel_version".into(), version);
        self.steps.push(json!({"kernel-build": {
            "key": built.record.key,
            "inputs": built.record.inputs,
            "kernel_release": release,
            "cached": built.cached,
            "signed_by": built.key,
        }}));
        self.artifacts.insert(
            b.into.clone(),
            Artifact::Tree {
                tree: built.tree,
                trust: Trust::Signed,
            },
        );
        Ok(())
    }
}
