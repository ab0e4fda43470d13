//! The conformance cases. Each is an async fn over a `Cri`; `run` executes them all and reports.

use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, bail, ensure};
use k8s_cri::v1 as cri;
use tonic::Code;

use crate::Cri;

/// What the suite needs from the environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// A pullable image reference (`registry/repo:tag`) the runtime can reach.
    pub image: String,
    /// A reference in the same registry that does not exist.
    pub missing_image: String,
}

type CaseFn = for<'a> fn(
    &'a Cri,
    &'a Options,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

pub struct Case {
    pub name: &'static str,
    pub run: CaseFn,
}

macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            run: |c, o| Box::pin($name(c, o)),
        }
    };
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(version_reports_runtime),
        case!(status_reports_runtime_ready),
        case!(runtime_config_answers),
        case!(pull_list_status_remove),
        case!(pull_is_idempotent),
        case!(status_of_missing_image_is_empty),
        case!(remove_of_missing_image_succeeds),
        case!(pull_missing_image_fails_not_found),
        case!(pull_invalid_reference_is_rejected),
        case!(empty_image_spec_is_invalid),
        case!(image_fs_info_reports_usage),
    ]
}

#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed.len(), self.failed.len())
    }
}

pub async fn run(cri: &Cri, opts: &Options, filter: Option<&str>) -> Report {
    let mut r = Report::default();
    for c in cases() {
        if filter.is_some_and(|f| !c.name.contains(f)) {
            continue;
        }
        match (c.run)(cri, opts).await {
            Ok(()) => {
                println!("ok   {}", c.name);
                r.passed.push(c.name);
            }
            Err(e) => {
                println!("FAIL {}: {e:#}", c.name);
                r.failed.push((c.name, format!("{e:#}")));
            }
        }
    }
    r
}

pub fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// PullImage without credentials; returns the image ref.
pub async fn pull(c: &Cri, image: &str) -> Result<String, tonic::Status> {
    let mut c = c.clone();
    Ok(c.image
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref)
}

async fn status(c: &Cri, image: &str) -> anyhow::Result<Option<cri::Image>> {
    let mut c = c.clone();
    Ok(c.image
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

async fn remove(c: &Cri, image: &str) -> anyhow::Result<()> {
    let mut c = c.clone();
    c.image
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await?;
    Ok(())
}

async fn version_reports_runtime(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut c = c.clone();
    let v = c
        .runtime
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await?
        .into_inner();
    ensure!(!v.runtime_name.is_empty(), "empty runtime_name");
    ensure!(!v.runtime_version.is_empty(), "empty runtime_version");
    ensure!(
        v.runtime_api_version == "v1",
        "runtime_api_version {:?}, want v1",
        v.runtime_api_version
    );
    Ok(())
}

async fn status_reports_runtime_ready(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut c = c.clone();
    let s = c
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let conds = s.status.context("no status")?.conditions;
    let rt = conds
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .context("no RuntimeReady condition")?;
    ensure!(
        rt.status,
        "RuntimeReady is false: {} {}",
        rt.reason,
        rt.message
    );
    let net = conds
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("no NetworkReady condition")?;
    ensure!(
        net.status || !net.reason.is_empty(),
        "NetworkReady false without a reason"
    );
    Ok(())
}

async fn runtime_config_answers(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut c = c.clone();
    let r = c
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await?
        .into_inner();
    let linux = r.linux.context("no linux runtime config")?;
    ensure!(
        cri::CgroupDriver::try_from(linux.cgroup_driver).is_ok(),
        "bad cgroup driver {}",
        linux.cgroup_driver
    );
    Ok(())
}

async fn pull_list_status_remove(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let id = pull(c, &o.image).await?;
    ensure!(
        id.starts_with("sha256:"),
        "image_ref {id:?} is not an image id"
    );
    let img = status(c, &o.image)
        .await?
        .context("ImageStatus after pull found nothing")?;
    ensure!(img.id == id, "status id {} != pulled {id}", img.id);
    ensure!(
        img.repo_tags
            .iter()
            .any(|t| o.image.ends_with(t.as_str()) || t.ends_with(&o.image)),
        "repo_tags {:?} lack {}",
        img.repo_tags,
        o.image
    );
    ensure!(
        img.repo_digests.iter().all(|d| d.contains("@sha256:")),
        "repo_digests {:?}",
        img.repo_digests
    );
    ensure!(img.size > 0, "size is 0");
    // by id and by repo digest too
    ensure!(
        status(c, &id).await?.is_some(),
        "status by id found nothing"
    );
    let rd = img.repo_digests.first().context("no repo digest")?.clone();
    ensure!(
        status(c, &rd).await?.is_some(),
        "status by repo digest found nothing"
    );
    let mut cc = c.clone();
    let all = cc
        .image
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images;
    ensure!(all.iter().any(|i| i.id == id), "ListImages lacks {id}");
    let filtered = cc
        .image
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&o.image),
            }),
        })
        .await?
        .into_inner()
        .images;
    ensure!(
        filtered.len() == 1 && filtered[0].id == id,
        "filtered list {:?}",
        filtered.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    remove(c, &id).await?;
    ensure!(
        status(c, &o.image).await?.is_none(),
        "image still there after RemoveImage by id"
    );
    ensure!(
        status(c, &rd).await?.is_none(),
        "repo digest still resolves after RemoveImage"
    );
    Ok(())
}

async fn pull_is_idempotent(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let a = pull(c, &o.image).await?;
    let b = pull(c, &o.image).await?;
    ensure!(a == b, "two pulls gave {a} and {b}");
    remove(c, &a).await
}

async fn status_of_missing_image_is_empty(c: &Cri, o: &Options) -> anyhow::Result<()> {
    ensure!(
        status(c, &o.missing_image).await?.is_none(),
        "status of a missing image returned one"
    );
    Ok(())
}

async fn remove_of_missing_image_succeeds(c: &Cri, o: &Options) -> anyhow::Result<()> {
    remove(c, &o.missing_image).await
}

async fn pull_missing_image_fails_not_found(c: &Cri, o: &Options) -> anyhow::Result<()> {
    match pull(c, &o.missing_image).await {
        Ok(id) => bail!("pulling a missing image returned {id}"),
        Err(s) => {
            // containerd reports registry 404s as NotFound or Unknown with "not found" in the text.
            ensure!(
                s.code() == Code::NotFound || s.message().contains("not found"),
                "got {:?}: {}",
                s.code(),
                s.message()
            );
            Ok(())
        }
    }
}

/// A pull of `image` must fail as a bad request (containerd answers Unknown for some).
async fn expect_rejected(c: &Cri, image: &str) -> anyhow::Result<()> {
    match pull(c, image).await {
        Ok(id) => bail!("{image:?} pulled as {id}"),
        Err(s) => {
            ensure!(
                matches!(s.code(), Code::InvalidArgument | Code::Unknown),
                "got {:?}: {}",
                s.code(),
                s.message()
            );
            Ok(())
        }
    }
}

async fn pull_invalid_reference_is_rejected(c: &Cri, _: &Options) -> anyhow::Result<()> {
    expect_rejected(c, "Not A Valid//Reference").await
}

async fn empty_image_spec_is_invalid(c: &Cri, _: &Options) -> anyhow::Result<()> {
    expect_rejected(c, "").await
}

async fn image_fs_info_reports_usage(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let id = pull(c, &o.image).await?;
    let mut cc = c.clone();
    let r = cc
        .image
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let fs = r.image_filesystems.first().context("no image filesystem")?;
    ensure!(
        fs.fs_id.as_ref().is_some_and(|f| !f.mountpoint.is_empty()),
        "no mountpoint"
    );
    ensure!(
        fs.used_bytes.as_ref().is_some_and(|u| u.value > 0),
        "used_bytes 0 with an image present"
    );
    ensure!(
        fs.inodes_used.as_ref().is_some_and(|u| u.value > 0),
        "inodes_used 0 with an image present"
    );
    ensure!(fs.timestamp > 0, "no timestamp");
    remove(c, &id).await
}
