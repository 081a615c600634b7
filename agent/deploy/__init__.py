"""The deploy pipeline: fetch, toolchain, build, release."""
