//! The embedding example (`examples/counter.rs`) runs a three-member cluster to the end and
//! every member reads the same, complete count.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../examples/counter.rs"]
mod counter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_count_to_the_same_value() {
    let dir = tempfile::tempdir().unwrap();
    let values = counter::run(dir.path(), 120).await.unwrap();
    assert_eq!(values, vec![120, 120, 120]);
}
