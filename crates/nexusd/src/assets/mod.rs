pub mod kernel_build;
