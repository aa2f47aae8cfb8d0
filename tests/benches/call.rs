//! The cost of calling a plugin: a 16-byte echo through a [`PluginHandle`] (into a host buffer,
//! and with a plugin-allocated output) and through a thread's [`LocalHandle`], next to the same
//! work as a direct Rust call, and through the async path with all its layers, in one run.
//!
//! `cargo bench -p plughost-tests --bench call`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

/// The work the echo plugin does, as an ordinary Rust function the compiler cannot inline.
#[inline(never)]
fn echo_direct(input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(input);
}

/// The same, allocating its output as the plugin-allocated path must.
#[inline(never)]
fn echo_direct_alloc(input: &[u8]) -> Vec<u8> {
    input.to_vec()
}

fn call_path(c: &mut Criterion) {
    let plughost_tests::BenchEcho {
        host,
        folders: _folders,
    } = plughost_tests::bench_echo();
    let handle = host.handle("echo").unwrap();

    let input = *b"0123456789abcdef";
    let mut out = Vec::with_capacity(64);
    handle.call_into(&input, &mut out).unwrap();
    assert_eq!(out, input);

    let mut group = c.benchmark_group("echo16");
    group.bench_function("direct", |b| {
        b.iter(|| echo_direct(black_box(&input), black_box(&mut out)))
    });
    group.bench_function("handle_host_buffer", |b| {
        b.iter(|| {
            handle
                .call_into(black_box(&input), black_box(&mut out))
                .unwrap()
        })
    });
    let mut local = handle.local();
    group.bench_function("local_host_buffer", |b| {
        b.iter(|| {
            local
                .call_into(black_box(&input), black_box(&mut out))
                .unwrap()
        })
    });
    drop(local);
    group.bench_function("direct_alloc", |b| {
        b.iter(|| echo_direct_alloc(black_box(&input)))
    });
    group.bench_function("handle_plugin_alloc", |b| {
        b.iter(|| black_box(handle.call(black_box(&input)).unwrap().len()))
    });

    // The async path with every layer on: metrics, circuit breaker, deadline, rate limit
    // (never reached), concurrency limit, and the call on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dispatcher = plughost::Dispatcher::new(
        std::sync::Arc::new(host),
        plughost::CallPolicy {
            max_concurrent: Some(64),
            rate: Some(plughost::Rate {
                calls: u32::MAX,
                per: Duration::from_secs(1),
            }),
            ..plughost::CallPolicy::default()
        },
    );
    let echo = dispatcher.plugin("echo").unwrap();
    group.bench_function("async_all_layers", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(echo.call(black_box(input.to_vec())).await.unwrap()) })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = call_path
}
criterion_main!(benches);
