
pub mod postgres;
