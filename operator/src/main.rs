//! The `weft-operator` binary: a thin shell over [`weft_operator::cli`].

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = weft_operator::cli::Cli::parse();
    let code = match weft_operator::cli::main(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    };
    std::process::exit(code);
}
