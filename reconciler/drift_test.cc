#include "reconciler/drift.h"
