//! coalmine-pipeline
