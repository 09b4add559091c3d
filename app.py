"""blendtalk browser demo (Gradio). The full app lands with the app issue; this page shows the rig."""

import argparse


def build_demo():
    import gradio as gr
    import numpy as np

    from blendtalk.render import Renderer, RenderConfig
    from blendtalk.rig import load_rig

    rig = load_rig()
    renderer = Renderer.for_rig(rig, RenderConfig(size=384))

    def show(jaw: float, smile: float, brows: float) -> np.ndarray:
        w = rig.weights({"jawOpen": jaw, "mouthSmileLeft": smile, "mouthSmileRight": smile, "browInnerUp": brows})
        return renderer(rig(w))

    with gr.Blocks(title="blendtalk") as demo:
        gr.Markdown("# blendtalk\nEmotional 3D talking faces. This preview poses the embedded CC0 face rig.")
        with gr.Row():
            with gr.Column():
                jaw = gr.Slider(0, 1, 0.0, label="jawOpen")
                smile = gr.Slider(0, 1, 0.0, label="mouthSmile")
                brows = gr.Slider(0, 1, 0.0, label="browInnerUp")
            image = gr.Image(label="face", value=show(0, 0, 0))
        for s in (jaw, smile, brows):
            s.change(show, [jaw, smile, brows], image)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    build_demo().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
