//! coalmine-analysis
