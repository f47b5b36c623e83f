"""MatFormer tools: Mix'n'Match extraction, submodel evaluation (`gigatron matformer ...`)."""
