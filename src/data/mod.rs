//! Datasets: conversion of public formats into rps's HDF5 layout, and per-worker shards.
//!
//! Layout (see docs/formats.md): one group per split (`train`, `test`) holding `images`
//! (u8, N×C×H×W) and `labels` (integer, N); root attributes `source`, `classes`,
//! `format` (CIFAR-10 also per-channel `mean` and `std`). Each worker reads only its shard
//! of the images by hyperslab and normalises (and, for training, may augment) its batches.

pub mod cifar;
pub mod convert;
pub mod dataset;
pub mod idx;
pub mod shard;
pub mod skew;

pub use dataset::{DatasetError, DatasetInfo, SplitInfo};
pub use shard::Shard;

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Value of the root attribute `format` written by the converter and checked on open.
pub const FORMAT: &str = "rps-dataset-1";
