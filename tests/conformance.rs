//! The runtime-agnostic conformance suite, run against a real kelsond and a real registry.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_against_kelsond() -> anyhow::Result<()> {
    let e = common::env().await?;
    let cri = e.daemon.cri().await?;
    let logs = tempfile::tempdir()?;
    let opts = kelson_conformance::suite::Options {
        image: format!("{}/test/standard:v1", e.registry.host),
        missing_image: format!("{}/test/nothing-here:v1", e.registry.host),
        log_dir: logs.path().to_owned(),
    };
    let report = kelson_conformance::suite::run(&cri, &opts, None).await;
    println!("{}", report.summary());
    common::remove_cgroup_tree("conformance");
    assert!(
        report.failed.is_empty(),
        "failed: {:#?}\n{}",
        report.failed,
        e.daemon.log()
    );
    assert_eq!(
        report.passed.len(),
        kelson_conformance::suite::cases().len()
    );
    Ok(())
}
