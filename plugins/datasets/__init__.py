"""Built-in dataset adapters: MSD (decathlon), ACDC, Synapse, LA (UA-MT h5), PROMISE12 (MetaImage), the
no-download MNI152 demo, the unlabelled pool of stage-1 pre-training, and the source domain of the miniature
world (issue 11): Kvasir-SEG read in place and generated "segment everything" scenes."""

from samora_kit.api import hookimpl

from . import acdc, convert, decathlon, kvasir_seg, la, mni152_demo, promise12, scenes, synapse, unlabelled_pool


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("dataset", decathlon.NAME, decathlon.DecathlonConfig, decathlon.build_decathlon,
                 example=decathlon.EXAMPLE)
    registry.add("dataset", acdc.NAME, acdc.AcdcConfig, acdc.build_acdc, example=acdc.EXAMPLE)
    registry.add("dataset", synapse.NAME, synapse.SynapseConfig, synapse.build_synapse, example=synapse.EXAMPLE)
    registry.add("dataset", la.NAME, la.LaConfig, la.build_la, example=la.EXAMPLE)
    registry.add("dataset", promise12.NAME, promise12.Promise12Config, promise12.build_promise12,
                 example=promise12.EXAMPLE)
    registry.add("dataset", mni152_demo.NAME, mni152_demo.Mni152DemoConfig, mni152_demo.build_mni152_demo,
                 example={})
    registry.add("dataset", unlabelled_pool.NAME, unlabelled_pool.UnlabelledPoolConfig,
                 unlabelled_pool.build_unlabelled_pool, example=unlabelled_pool.EXAMPLE)
    registry.add("dataset", kvasir_seg.NAME, kvasir_seg.KvasirSegConfig, kvasir_seg.build_kvasir_seg,
                 example=kvasir_seg.EXAMPLE)
    registry.add("dataset", scenes.NAME, scenes.ScenesConfig, scenes.build_scenes, example=scenes.EXAMPLE)
    convert.register(registry)
