//! coalmine-spec
