"""`slicert serve-dicom`: run a bundle as a DICOM node (storage SCP) that stores SEG/SR results at a
configured destination. See docs/dicom-node.md."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve-dicom")
    def serve_dicom(
        bundle: Path = typer.Option(..., "--bundle", help="The .slicert bundle to run on every received image."),
        ae_title: str = typer.Option("SLICERT", "--ae-title", help="This node's AE title (called AE title)."),
        port: int = typer.Option(11112, "--port", help="TCP port to listen on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
        forward: str | None = typer.Option(None, "--forward", help="AE@HOST:PORT that receives every result."),
        reply_to: list[str] = typer.Option([], "--reply-to",
                                           help="CALLING_AE@HOST:PORT: results of images sent by CALLING_AE go "
                                                "back to that address (repeatable; used when --forward is not set)."),
        allow_caller: list[str] = typer.Option([], "--allow-caller",
                                               help="Accept associations only from these calling AE titles."),
        spool: Path = typer.Option(Path("slicert-spool"), "--spool",
                                   help="Directory for received instances until their results are stored."),
        threads: int | None = typer.Option(None, "--threads", help="Inference threads (default: usable cores)."),
        timeout_s: float = typer.Option(30.0, "--timeout", help="Network/DIMSE timeouts in seconds."),
        eligibility: str = typer.Option("refuse", "--eligibility",
                                        help="Inputs outside the bundle's intended inputs: refuse (failure status), "
                                             "flag (run, flagged in the SR) or off (docs/trust.md)."),
        log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    ) -> None:
        """Storage SCP: run the bundle on each received image, C-STORE its SEG/SR to --forward (or back to
        the sender's --reply-to address). Answers C-ECHO; refuses transfer syntaxes it cannot decode."""
        import logging

        from engine.dicomout.node.config import AEAddress, NodeConfig
        from engine.dicomout.node.server import serve_forever
        from engine.errors import SliceRTError

        logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("highdicom", "pynetdicom"):  # their INFO is per attribute / per PDU; ours is per association
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
        try:
            replies = {}
            for item in reply_to:
                addr = AEAddress.parse(item, "--reply-to")
                replies[addr.ae_title] = addr
            config = NodeConfig(bundle=bundle, ae_title=ae_title, host=host, port=port,
                                forward=AEAddress.parse(forward) if forward else None, reply_to=replies,
                                allowed_callers=tuple(allow_caller), spool=spool, threads=threads, timeout_s=timeout_s,
                                eligibility=eligibility)
            serve_forever(config)
        except SliceRTError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
