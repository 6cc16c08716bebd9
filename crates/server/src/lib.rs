//! coalmine-server
